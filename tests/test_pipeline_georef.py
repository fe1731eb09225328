"""Georeferencing on real Landsat rasters from ../shared/data/satellite: outputs carry the reference
CRS and transform exactly, sources on other grids are warped onto it, and the COGs are valid."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.warp import Resampling, reproject

from conftest import shared_path
from pipeline.runners.local import run_job
from pipeline.spec import parse_job
from pipeline.writers import validate_cog
from pipeline_support import SourceAFuser
from tcmoa.interface import FusionResult

pytestmark = pytest.mark.shared_data


class SourceBFuser(SourceAFuser):
    """Returns source B: shows what the engine fed the model for the second source."""

    name = "stand-in:source-b"

    def fuse_batch(self, a, b, task="vif", *, return_prompts=False):
        channels = 3 if max(a.shape[-1], b.shape[-1]) == 3 else 1
        return FusionResult(np.repeat(b, channels // b.shape[-1], axis=-1).astype(np.float32))


def _job(tmp_path, discover, sources, reference, **output):
    return parse_job({
        "name": "geo", "task": "vif", "discover": discover, "sources": sources, "reference": reference,
        "tiling": {"tile": 224, "overlap": 56, "block": 1024},
        "output": {"formats": ["cog", "zarr"], "chunk": 512, "dir": str(tmp_path / "out"), **output},
        "run_dir": str(tmp_path / "run"),
    }, base=tmp_path)


def _assert_grid(path, reference_file):
    with rasterio.open(path) as out, rasterio.open(reference_file) as ref:
        assert out.crs == ref.crs
        assert out.transform == ref.transform  # exactly, not approximately
        assert (out.width, out.height) == (ref.width, ref.height)
        assert out.tags()["TCMOA_JOB"] == "geo"


def test_landsat8_thermal_onto_the_optical_band_files(tmp_path):
    root = shared_path("data", "satellite", "landsat8_195025_small")
    job = _job(tmp_path, {"type": "glob", "root": str(root)}, [
        {"role": "optical", "pattern": "LC08_{scene}_B{band}.TIF", "bands": [4, 3, 2], "normalise": "dtype"},
        {"role": "thermal", "pattern": "LC08_{scene}_B10.TIF"},
        {"role": "pan", "pattern": "LC08_{scene}_B8.TIF"},  # 15 m: warped onto the 30 m grid
    ], "optical", prompt_maps=True)
    summary = run_job(job, fuser=SourceAFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    (item, outputs), = summary.outputs.items()
    reference = root / "LC08_L1TP_195025_20130707_20170503_01_T1_B4.TIF"
    _assert_grid(outputs["cog"], reference)
    assert validate_cog(outputs["cog"]) == []
    with rasterio.open(outputs["cog"]) as out:
        assert out.nodata == -32768 and out.descriptions[0].startswith("optical:")
        fused = out.read()
    bands = []
    for b in (4, 3, 2):
        with rasterio.open(root / f"LC08_L1TP_195025_20130707_20170503_01_T1_B{b}.TIF") as ds:
            bands.append(ds.read(1))
    np.testing.assert_array_equal(fused, np.stack(bands))  # int16 with the dtype stretch: exact
    group = zarr.open_group(outputs["zarr"], mode="r")
    assert group.attrs["proj:code"] == "EPSG:32632"
    assert group.attrs["spatial:transform"] == list(rasterio.open(reference).transform)[:6]
    assert group["prompt_share"].shape == (3, 41, 41)
    stac = json.loads(open(outputs["stac"]).read())
    assert stac["properties"]["proj:code"] == "EPSG:32632" and stac["assets"]["cog"]["file:checksum"].startswith("1220")


def test_landsat7_swir_with_rgb_from_one_multiband_file(tmp_path):
    path = shared_path("data", "satellite", "landsat7_etm", "L7_ETMs.tif")
    stac = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "L7_ETMs", "assets": {"etm": {"href": str(path)}}, "properties": {}},
    ]}
    (tmp_path / "items.json").write_text(json.dumps(stac))
    job = _job(tmp_path, {"type": "stac", "file": "items.json"}, [
        {"role": "rgb", "assets": ["etm"], "bands": [3, 2, 1], "normalise": "dtype"},
        {"role": "swir", "assets": ["etm"], "bands": [5], "normalise": {"method": "percentile", "low": 1, "high": 99}},
    ], "rgb")
    summary = run_job(job, fuser=SourceAFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    outputs = summary.outputs["geo/L7_ETMs"]
    _assert_grid(outputs["cog"], path)
    assert validate_cog(outputs["cog"]) == []
    with rasterio.open(outputs["cog"]) as out, rasterio.open(path) as src:
        np.testing.assert_array_equal(out.read(), src.read([3, 2, 1]))


def test_two_scene_archive_30m_with_60m(tmp_path):
    """Scene 224078 (B4, B3, B2 at 30 m) with B2 of the neighbouring row 224077 at 60 m: the 60 m
    source is warped onto the 30 m grid; outside its footprint it is nodata."""
    root = shared_path("data", "satellite", "landsat8_224077_224078")
    optical = ";".join(str(root / f"LC08_L1TP_224078_20200518_20200518_01_RT_B{b}.TIF") for b in (4, 3, 2))
    neighbour = root / "LC08_L1TP_224077_20200518_20200518_01_RT_B2_60m.TIF"
    (tmp_path / "items.csv").write_text(f"item,optical,neighbour\n224078,{optical},{neighbour}\n")
    job = _job(tmp_path, {"type": "csv", "file": "items.csv"}, [
        {"role": "optical", "normalise": {"method": "percentile", "low": 1, "high": 99}},
        {"role": "neighbour", "normalise": {"method": "fixed", "min": 0, "max": 65535}, "resampling": "bilinear"},
    ], "optical", dtype="float32", scale="full")
    summary = run_job(job, fuser=SourceBFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    outputs = summary.outputs["geo/224078"]
    reference = root / "LC08_L1TP_224078_20200518_20200518_01_RT_B4.TIF"
    _assert_grid(outputs["cog"], reference)
    assert validate_cog(outputs["cog"]) == []
    with rasterio.open(outputs["cog"]) as out:
        assert len(out.overviews(1)) >= 2  # 2041 x 1860: internal overviews
        fused = out.read(1)
    with rasterio.open(reference) as ref, rasterio.open(root / "LC08_L1TP_224077_20200518_20200518_01_RT_B2_60m.TIF") as src:
        expected = np.zeros((ref.height, ref.width), np.float64)
        footprint = np.zeros((ref.height, ref.width), np.uint8)
        reproject(src.read(1), expected, src_transform=src.transform, src_crs=src.crs, dst_transform=ref.transform,
                  dst_crs=ref.crs, resampling=Resampling.bilinear)
        reproject(np.ones((src.height, src.width), np.uint8), footprint, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=ref.transform, dst_crs=ref.crs, resampling=Resampling.nearest)
    inside = footprint.astype(bool)
    inside[1:-1, 1:-1] &= inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]  # away from the edge
    assert 0.2 < inside.mean() < 0.6  # the scenes overlap in part
    np.testing.assert_allclose(fused[inside], expected[inside] / 65535, atol=2e-4)
    # float output with a masked source: nodata is NaN, and every JSON document stays strict JSON
    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    store = pathlib.Path(outputs["zarr"])
    for document in [store / "zarr.json", store / "fused" / "zarr.json", pathlib.Path(outputs["stac"])]:
        strict(document.read_text())
    assert strict((store / "fused" / "zarr.json").read_text())["attributes"]["nodata"] == "NaN"
