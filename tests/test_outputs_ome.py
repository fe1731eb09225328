"""Microscopy outputs as their users open them: the OME-Zarr 0.5 store passes an OME-Zarr validator
(yaozarrs, structure and metadata) and carries the input's physical pixel size; the OME-TIFF read
back with tifffile has the same pixels as the plain TIFF of the item, the physical size in its
OME-XML and in its resolution tags, and a pyramid whose levels equal the OME-Zarr's."""
from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import pytest
import rasterio
import tifffile
import zarr

from pipeline.runners.local import run_job
from pipeline.spec import parse_job
from pipeline_support import ContextFuser

PHYSICAL_X, PHYSICAL_Y = 0.325, 0.35  # micrometres: different on purpose, so swapped axes show


def _stack_job(root: pathlib.Path, pattern: str, formats=("tiff", "ome-zarr", "ome-tiff")) -> dict:
    return {
        "name": "stack", "task": "mff",
        "discover": {"type": "glob", "root": str(root)},
        "sources": [{"role": "plane", "pattern": pattern, "kind": "stack", "normalise": "dtype"}],
        "tiling": {"tile": 112, "overlap": 32, "block": 128},
        "model": {"batch_size": 4},
        "output": {"formats": list(formats), "chunk": 64, "dir": str(root / "out"), "dtype": "uint16", "scale": "full"},
        "run_dir": str(root / "run"),
    }


def _stack(rng, shape=(4, 150, 170)) -> np.ndarray:
    return rng.integers(0, 60000, shape, dtype=np.uint16)


def _read(path: pathlib.Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # microscopy has no CRS
        with rasterio.open(path) as plain:
            return plain.read()


@pytest.fixture(scope="module")
def ome_run(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("ome")
    tifffile.imwrite(root / "cells.ome.tif", _stack(np.random.default_rng(3)), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": PHYSICAL_X, "PhysicalSizeY": PHYSICAL_Y,
        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    summary = run_job(parse_job(_stack_job(root, "{name}.ome.tif"), base=root), fuser=ContextFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    return root / "out"


def test_ome_zarr_passes_the_validator_with_the_physical_scale(ome_run):
    import yaozarrs

    store = ome_run / "cells.ome.zarr"
    group = yaozarrs.validate_zarr_store(str(store))  # raises on any structure or metadata problem
    assert group.ome_version() == "0.5"
    root = json.loads((store / "zarr.json").read_text())
    assert root["zarr_format"] == 3
    multiscale = root["attributes"]["ome"]["multiscales"][0]
    assert [(a["name"], a["type"], a.get("unit")) for a in multiscale["axes"]] == [
        ("c", "channel", None), ("y", "space", "micrometer"), ("x", "space", "micrometer")]
    shapes = [zarr.open_array(store / d["path"], mode="r").shape for d in multiscale["datasets"]]
    assert shapes == [(1, 150, 170), (1, 75, 85), (1, 38, 43)]  # halved until one 64-pixel chunk holds it
    for level, dataset in enumerate(multiscale["datasets"]):
        scale = dataset["coordinateTransformations"][0]["scale"]
        np.testing.assert_allclose(scale, [1.0, PHYSICAL_Y * 2**level, PHYSICAL_X * 2**level])
    assert root["attributes"]["tcmoa"]["physical_pixel_size"]["origin"] == "OME-XML"
    from pipeline.ome import halve

    levels = zarr.open_group(store, mode="r")
    for level in (1, 2):  # written a chunk at a time, equal to halving the whole level before
        np.testing.assert_array_equal(levels[str(level)][...], halve(levels[str(level - 1)][...], None))


def test_ome_tiff_keeps_the_physical_size_and_the_pixels_of_the_tiff(ome_run):
    expected = _read(ome_run / "cells.tiff")
    zarr_levels = zarr.open_group(ome_run / "cells.ome.zarr", mode="r")
    np.testing.assert_array_equal(zarr_levels["0"][...], expected)
    with tifffile.TiffFile(ome_run / "cells.ome.tif") as tif:
        assert tif.is_ome
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeY"]) == (PHYSICAL_X, PHYSICAL_Y)
        assert pixels["PhysicalSizeXUnit"] == pixels["PhysicalSizeYUnit"] == "µm"
        page = tif.pages[0]
        assert page.tags["ResolutionUnit"].value == 3  # centimetre
        x_per_cm, y_per_cm = (n / d for n, d in (page.tags["XResolution"].value, page.tags["YResolution"].value))
        np.testing.assert_allclose([1e4 / x_per_cm, 1e4 / y_per_cm], [PHYSICAL_X, PHYSICAL_Y], rtol=1e-6)
        assert page.is_tiled and page.predictor == 2 and page.compression == 8  # deflate, horizontal predictor
        series = tif.series[0]
        assert (pixels["SizeC"], pixels["SizeY"], pixels["SizeX"]) == expected.shape and len(series.levels) == 3
        np.testing.assert_array_equal(series.asarray().reshape(expected.shape), expected)
        for i, level in enumerate(series.levels[1:], start=1):
            reduced = zarr_levels[str(i)][...]
            np.testing.assert_array_equal(level.asarray().reshape(reduced.shape), reduced)


def _check_no_scale(out: pathlib.Path, name: str) -> None:
    import yaozarrs

    store = out / f"{name}.ome.zarr"
    yaozarrs.validate_zarr_store(str(store))
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    assert all("unit" not in axis for axis in attrs["ome"]["multiscales"][0]["axes"])
    assert attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]
    assert attrs["tcmoa"]["physical_pixel_size"].startswith("none: the input has no physical pixel size")
    with tifffile.TiffFile(out / f"{name}.ome.tif") as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert "PhysicalSizeX" not in pixels and tif.pages[0].tags["ResolutionUnit"].value == 1  # none
        expected = _read(out / f"{name}.tiff")
        np.testing.assert_array_equal(tif.series[0].asarray().reshape(expected.shape), expected)
    np.testing.assert_array_equal(zarr.open_array(store / "0", mode="r")[...], expected)


def test_plain_tiff_stack_gets_no_invented_scale(tmp_path):
    """A stack with no OME or ImageJ metadata, like the real one in ../shared/data (below)."""
    tifffile.imwrite(tmp_path / "plain.tif", _stack(np.random.default_rng(4), (3, 70, 60)), photometric="minisblack", metadata=None)
    summary = run_job(parse_job(_stack_job(tmp_path, "{name}.tif"), base=tmp_path), fuser=ContextFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    _check_no_scale(tmp_path / "out", "plain")


@pytest.mark.shared_data
def test_real_stardist_stack(tmp_path):
    """The 31-plane stardist stack (no physical size in the file): every plane fused, no scale invented."""
    from conftest import shared_path

    stack = shared_path("data", "microscopy", "stardist", "img3d.tif")
    summary = run_job(parse_job(_stack_job(stack.parent, "{name}3d.tif") | {"run_dir": str(tmp_path / "run")}
                                | {"output": _stack_job(tmp_path, "")["output"]}, base=tmp_path),
                      fuser=ContextFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    _check_no_scale(tmp_path / "out", "img")


def test_imagej_stack_scale_is_read(tmp_path):
    from pipeline.sources import SourceRef, inspect

    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, _stack(np.random.default_rng(5), (3, 20, 30)), imagej=True,
                     resolution=(1 / 0.5, 1 / 0.25), metadata={"axes": "ZYX", "unit": "micron"})
    info = inspect(SourceRef(role="plane[0]", kind="stack", files=(str(path),), plane=0))
    assert (info.pixel_size.x, info.pixel_size.y, info.pixel_size.unit) == (0.5, 0.25, "µm")


def test_ome_formats_refuse_georeferenced_items(tmp_path):
    from pipeline_support import pair_job, random_raster, write_geotiff

    rng = np.random.default_rng(6)
    write_geotiff(tmp_path / "s1_a.tif", random_raster(rng, (60, 70), "uint16"))
    write_geotiff(tmp_path / "s1_b.tif", random_raster(rng, (60, 70), "uint16"))
    summary = run_job(parse_job(pair_job(tmp_path, formats=("ome-zarr",)), base=tmp_path), fuser=ContextFuser(), progress=False)
    assert summary.items_done == 0 and "georeferenced" in summary.failures[0]["error"]


def test_pyramid_means_leave_nodata_out():
    from pipeline.ome import halve

    block = np.array([[[10, 0, 7], [30, 0, 9], [5, 5, 0]]], dtype=np.uint16)  # 0 is nodata; odd edges repeat
    np.testing.assert_array_equal(halve(block, 0), [[[20, 8], [5, 0]]])
    floats = np.array([[[1.0, np.nan], [np.nan, np.nan]]], dtype=np.float32)
    out = halve(floats, float("nan"))
    assert out.dtype == np.float32 and out[0, 0, 0] == 1.0
    np.testing.assert_array_equal(halve(np.full((1, 2, 2), np.nan, np.float32), float("nan")), [[[np.nan]]])


def test_prompt_maps_beside_ome_outputs(tmp_path):
    tifffile.imwrite(tmp_path / "p.tif", _stack(np.random.default_rng(7), (3, 40, 50)), photometric="minisblack", metadata=None)
    doc = _stack_job(tmp_path, "{name}.tif", formats=("ome-tiff",))
    doc["output"]["prompt_maps"] = True
    summary = run_job(parse_job(doc, base=tmp_path), fuser=ContextFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    shares = _read(tmp_path / "out" / "p.prompts.tiff")
    assert shares.shape == (3, 40, 50) and np.isfinite(shares).all()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.ome.tif", "p.prompts.tiff", "p.stac.json"]


def test_three_channel_float_export_with_zstd(tmp_path):
    """Float data (NaN nodata) with ZSTD and the floating-point predictor, three channels, in nanometres."""
    import yaozarrs

    from pipeline import ome

    data = np.random.default_rng(8).random((3, 300, 260), dtype=np.float32)
    data[:, :10, :10] = np.nan
    store = zarr.open_group(tmp_path / "work.zarr", mode="w")
    store.create_array("fused", shape=data.shape, chunks=(3, 64, 64), dtype="float32", fill_value=float("nan"))[:] = data
    size = ome.PixelSize(y=0.2, x=0.1, unit="nm", origin="OME-XML")
    ome.export(tmp_path / "work.zarr", {"ome-zarr": tmp_path / "o.ome.zarr", "ome-tiff": tmp_path / "o.ome.tif"},
               array="fused", name="x", chunk=64, nodata=float("nan"), band_names=["r", "g", "b"], size=size,
               compress="zstd", attributes={})
    yaozarrs.validate_zarr_store(str(tmp_path / "o.ome.zarr"))
    levels = zarr.open_group(tmp_path / "o.ome.zarr", mode="r")
    axes = levels.attrs["ome"]["multiscales"][0]["axes"]
    assert [a.get("unit") for a in axes] == [None, "nanometer", "nanometer"]
    assert np.isnan(levels["1"][:, :5, :5]).all() and not np.isnan(levels["1"][:, 5:, 5:]).any()
    with tifffile.TiffFile(tmp_path / "o.ome.tif") as tif:
        series = tif.series[0]
        assert series.axes == "CYX" and tif.pages[0].predictor == 3 and tif.pages[0].compression == 50000
        np.testing.assert_array_equal(series.asarray(), data)
        assert [lvl.shape for lvl in series.levels] == [levels[str(i)].shape for i in range(4)]
        for i, level in enumerate(series.levels[1:], start=1):
            np.testing.assert_array_equal(level.asarray(), levels[str(i)][...])
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeY"], pixels["PhysicalSizeXUnit"]) == (0.1, 0.2, "nm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.ome.tif", "o.ome.zarr", "work.zarr"]  # no temporaries left


def test_open_run_gives_an_ome_zarr_only_item_with_physical_coordinates(tmp_path):
    import tcmoa

    tifffile.imwrite(tmp_path / "c.ome.tif", _stack(np.random.default_rng(9), (2, 30, 40)), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    summary = run_job(parse_job(_stack_job(tmp_path, "{name}.ome.tif", formats=("ome-zarr",)), base=tmp_path),
                      fuser=ContextFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    ds = tcmoa.open_run(tmp_path / "run")["c"]
    np.testing.assert_array_equal(ds.fused.values, zarr.open_array(tmp_path / "out" / "c.ome.zarr" / "0", mode="r")[...])
    np.testing.assert_allclose(ds.x.values[:3], [0.0, 0.5, 1.0]) and np.testing.assert_allclose(ds.y.values[:2], [0.0, 0.25])
    assert ds.attrs["physical_pixel_size"]["unit"] == "µm"
