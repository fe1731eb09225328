"""The notebook API: `import tcmoa` stays light, `tcmoa.load_fuser`, integer inputs scaled by their
dtype's range, `tcmoa.open_run` giving a run's outputs as xarray objects and its STAC catalog."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import rasterio

import tcmoa
from outputs_support import demo_run  # noqa: F401  (session fixture)
from tcmoa.interface import as_nhwc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_tcmoa_is_light_and_names_resolve_lazily():
    code = ("import sys, tcmoa; heavy = [m for m in ('torch', 'rasterio', 'xarray', 'ray', 'pipeline') if m in sys.modules]; "
            "assert not heavy, heavy; assert callable(tcmoa.load_fuser) and 'torch' in sys.modules; "
            "assert 'pipeline' not in sys.modules; assert callable(tcmoa.open_run) and 'pipeline' in sys.modules")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
    from pipeline.run_outputs import open_run
    from tcmoa.inference import load_fuser

    assert tcmoa.load_fuser is load_fuser and tcmoa.open_run is open_run
    with pytest.raises(AttributeError):
        tcmoa.no_such_name  # noqa: B018


@pytest.mark.parametrize("dtype, low, high", [("uint8", 0, 255), ("uint16", 0, 65535), ("int16", -32768, 32767)])
def test_integer_inputs_are_scaled_by_their_dtype_range(dtype, low, high):
    values = np.array([[low, high], [0, (high + low) // 2]], dtype=dtype)
    scaled = as_nhwc(values)[0, ..., 0]
    expected = (values.astype(np.float64) - low) / (high - low)
    assert scaled.dtype == np.float32 and scaled.min() >= 0 and scaled.max() == 1
    np.testing.assert_allclose(scaled, expected, rtol=0, atol=1e-7)
    assert as_nhwc(np.array([[True, False]]))[0, 0, :, 0].tolist() == [1.0, 0.0]
    with pytest.raises(TypeError, match="dtype"):
        as_nhwc(np.array([["a", "b"]]))


def test_fuse_gives_the_same_result_for_uint8_and_its_unit_float(tmp_path):
    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    b8 = rng.integers(0, 256, (112, 112), dtype=np.uint8)
    for fuser in (tcmoa.load_fuser("random:tiny"), tcmoa.load_fuser("baseline:laplacian")):
        from_uint8 = fuser.fuse(a8, b8, task="vif")
        from_float = fuser.fuse(a8 / np.float32(255), b8 / np.float32(255), task="vif")
        np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)
        a16, b16 = a8.astype(np.uint16) * 257, b8.astype(np.uint16) * 257  # the same image in 16 bits
        np.testing.assert_allclose(fuser.fuse_batch(a16[None], b16[None, ..., None]).image[0], from_float, atol=1e-5)


def test_open_run_gives_xarray_outputs_and_the_catalog(demo_run):
    run = tcmoa.open_run(demo_run)
    assert sorted(run) == ["brackets/astronaut", "brackets/chelsea", "brackets/coffee", "focus/camera", "focus/coins", "geo/scene1"]
    assert run.catalog is not None and len(list(run.catalog.get_items(recursive=True))) == 6 and not run.failures
    geo = run["scene1"]  # the Zarr store, georeferenced
    with rasterio.open(demo_run / "outputs" / "scene1.tif") as cog:
        assert geo.fused.rio.crs == cog.crs and geo.fused.rio.transform().almost_equals(cog.transform)
        assert geo.fused.shape == (cog.count, cog.height, cog.width) and "prompt_share" in geo
    photo = run["astronaut"]  # PNG + prompt TIFF through rioxarray
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(demo_run / "outputs" / "astronaut.png") as png:
            np.testing.assert_array_equal(photo.fused.values, png.read())
    assert photo.prompt_share.dims == ("source", "y", "x") and photo.prompt_share.shape[0] == 3
    with pytest.raises(KeyError, match="no such done item"):
        run["nothing"]
    with pytest.raises(FileNotFoundError, match="not a tcmoa run directory"):
        tcmoa.open_run(demo_run / "outputs")
