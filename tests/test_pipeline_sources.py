"""Readers (z-stacks, photos, 16-bit PNG, EXIF), discovery (glob, CSV, STAC) and job validation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import tifffile
import zarr
from PIL import Image, ImageOps

from pipeline.discover import discover
from pipeline.runners.local import run_job
from pipeline.samples import write_samples
from pipeline.spec import SpecError, load_job, parse_job
from pipeline_support import SourceAFuser, random_raster, write_geotiff


def _single_role_job(tmp_path, pattern, *, task="mff", formats=("zarr",), multiple=False, normalise="dtype", **output):
    return parse_job({
        "name": "t", "task": task, "discover": {"type": "glob", "root": str(tmp_path)},
        "sources": [{"role": "src", "pattern": pattern, "multiple": multiple, "normalise": normalise}],
        "tiling": {"tile": 112, "overlap": 32, "block": 128},
        "output": {"formats": list(formats), "chunk": 64, "dir": str(tmp_path / "out"), "prompt_maps": True, **output},
        "run_dir": str(tmp_path / "run"),
    }, base=tmp_path)


def test_ome_tiff_focus_stack_is_an_item_with_one_source_per_plane(tmp_path):
    stack = random_raster(np.random.default_rng(0), (4, 150, 170), "uint16")
    tifffile.imwrite(tmp_path / "cells.ome.tif", stack, ome=True, metadata={"axes": "ZYX"}, tile=(64, 64))
    summary = run_job(_single_role_job(tmp_path, "{name}.ome.tif"), fuser=SourceAFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    group = zarr.open_group(tmp_path / "out" / "cells.zarr", mode="r")
    np.testing.assert_array_equal(group["fused"][0], stack[0])  # the reduction starts with plane 0
    shares = group["prompt_share"][:]
    assert shares.shape[0] == 4 and group["prompt_share"].attrs["source_names"][3] == "share:src[3]"
    np.testing.assert_allclose(shares[0], 1.0)  # a source-A fuser gives plane 0 everything
    np.testing.assert_allclose(shares[1:], 0.0)


def test_exposure_brackets_with_exif_orientation(tmp_path):
    write_samples(tmp_path)
    job = _single_role_job(tmp_path / "brackets", "{scene}_*.jpg", task="mef", formats=("png",), multiple=True, prompt_maps=False)
    summary = run_job(job, fuser=SourceAFuser(), progress=False)
    assert summary.items_done == 3, summary.failures
    first = ImageOps.exif_transpose(Image.open(tmp_path / "brackets" / "chelsea_1_ev-2.jpg"))
    out = Image.open(tmp_path / "brackets" / "out" / "chelsea.png")
    assert out.size == first.size == (451, 300)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(first))


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_photos_round_trip(tmp_path, channels):
    rng = np.random.default_rng(channels)
    shape = (70, 90, channels) if channels == 3 else (70, 90)
    a = rng.integers(0, 65535, shape, dtype=np.uint16)
    for name, data in (("p_a.png", a), ("p_b.png", rng.integers(0, 65535, shape, dtype=np.uint16))):
        with rasterio.open(tmp_path / name, "w", driver="PNG", width=90, height=70, count=channels, dtype="uint16") as ds:
            ds.write(data.reshape(70, 90, channels).transpose(2, 0, 1))
    job = parse_job({
        "name": "t", "task": "mef", "discover": {"type": "glob", "root": str(tmp_path)},
        "sources": [{"role": "a", "pattern": "{s}_a.png", "normalise": "dtype"}, {"role": "b", "pattern": "{s}_b.png", "normalise": "dtype"}],
        "tiling": {"tile": 112, "overlap": 32}, "output": {"formats": ["png"], "dir": str(tmp_path / "out")},
        "run_dir": str(tmp_path / "run"),
    }, base=tmp_path)
    assert run_job(job, fuser=SourceAFuser(), progress=False).items_done == 1
    with rasterio.open(tmp_path / "out" / "p.png") as ds:
        assert ds.dtypes[0] == "uint16"
        np.testing.assert_array_equal(ds.read().transpose(1, 2, 0).reshape(shape), a)


def test_glob_groups_band_files_and_reports_missing_partners(tmp_path):
    rng = np.random.default_rng(1)
    for scene in ("x1", "x2"):
        for band in (2, 3, 4):
            write_geotiff(tmp_path / f"S_{scene}_B{band}.TIF", random_raster(rng, (30, 30), "uint16"))
    write_geotiff(tmp_path / "S_x1_B10.TIF", random_raster(rng, (30, 30), "uint16"))
    job = parse_job({
        "name": "t", "task": "vif", "discover": {"type": "glob", "root": str(tmp_path), "group_by": ["scene"]},
        "sources": [{"role": "rgb", "pattern": "S_{scene}_B{band}.TIF", "bands": [4, 3, 2]},
                    {"role": "tir", "pattern": "S_{scene}_B10.TIF"}],
        "run_dir": str(tmp_path / "run"),
    }, base=tmp_path)
    items = {i.item_id: i for i in discover(job.collections[0])}
    assert sorted(items) == ["x1", "x2"]
    assert [f.rsplit("_", 1)[1] for f in items["x1"].roles["rgb"].files] == ["B4.TIF", "B3.TIF", "B2.TIF"]
    assert items["x1"].roles["rgb"].band_files and items["x1"].error is None
    assert "source 'tir': no file matches" in items["x2"].error and "S_x2_B10.TIF" in items["x2"].error


def test_csv_and_stac_discovery_resolve_paths_against_their_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "items.csv").write_text("item,vis,ir\nday1,v1.tif,i1.tif\nday2,v2.tif,\n")
    stac = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "f1", "assets": {"vis": {"href": "v1.tif"}, "ir": {"href": "file:///abs/i1.tif"}}},
        {"type": "Feature", "id": "f2", "assets": {"vis": {"href": "v2.tif"}}},
    ]}
    (tmp_path / "d" / "items.json").write_text(json.dumps(stac))
    base = {"name": "t", "task": "vif", "run_dir": str(tmp_path / "run")}
    csv_job = parse_job({**base, "discover": {"type": "csv", "file": "d/items.csv"}, "sources": [{"role": "vis"}, {"role": "ir"}]}, base=tmp_path)
    found = discover(csv_job.collections[0])
    assert found[0].roles["vis"].files == (str(tmp_path / "d" / "v1.tif"),) and found[0].error is None
    assert "empty cell" in found[1].error
    stac_job = parse_job({**base, "discover": {"type": "stac", "file": "d/items.json"},
                          "sources": [{"role": "vis", "assets": ["vis"]}, {"role": "ir", "assets": ["ir"]}]}, base=tmp_path)
    found = discover(stac_job.collections[0])
    assert found[0].roles["ir"].files == ("/abs/i1.tif",)
    assert "has no asset(s) ['ir']" in found[1].error


def test_job_validation_lists_every_problem_with_its_field(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "name: j\ntask: {vif: 0.5, sharpen: 0.5}\ndiscover: {type: glob}\n"
        "sources:\n  - {role: a, pattern: '*.tif', bands: [1, 2]}\n  - {role: a, pattern: '*.png', normalise: {method: fixed}}\n"
        "tiling: {tile: 448, overlap: 300, block: 1000}\nmodel: {batch_size: 0}\noutput: {formats: [jpeg]}\n"
    )
    with pytest.raises(SpecError) as err:
        load_job(path)
    message = str(err.value)
    for expected in (
        str(path), "unknown task 'sharpen'", "sources[0].bands: the model takes 1 or 3 channels",
        "role 'a' appears more than once", "sources[1].normalise: method fixed needs min and max",
        "tiling.overlap: overlap 300 is more than half the tile", "tiling.block: block 1000 must be a multiple",
        "model.batch_size: 0 is below the minimum 1", "output.formats: unknown format(s) ['jpeg']",
    ):
        assert expected in message, (expected, message)


@pytest.mark.parametrize("name", ["demo", "satellite_ir_optical", "microscopy_focus_stack", "exposure_brackets"])
def test_repository_job_examples_are_valid(name):
    import pathlib

    assert load_job(pathlib.Path(__file__).resolve().parents[1] / "jobs" / f"{name}.yaml").collections


@pytest.mark.parametrize("shape,max_side,nodata,band_files", [
    ((3, 301, 257), 64, None, False),  # odd sizes, pixel-interleaved
    ((2, 250, 400), 37, 7, False),  # nodata
    ((3, 130, 90), 40, 0, True),  # one file per band
])
def test_decimated_read_by_strips_matches_gdal(tmp_path, monkeypatch, shape, max_side, nodata, band_files):
    """Plain files are decimated from full-resolution strips (all-core decoding); the sample must be
    the one GDAL's own nearest-neighbour decimated read gives, across strip boundaries."""
    from rasterio.windows import Window

    from pipeline import sources
    from pipeline.sources import Grid, expand_sources, open_reader
    from pipeline.spec import NormaliseSpec

    rng = np.random.default_rng(shape[1])
    data = rng.integers(0, 60, shape, dtype=np.uint16)
    if nodata is not None:
        data[:, 20:70, 10:40] = nodata
    if band_files:
        files = [str(write_geotiff(tmp_path / f"b{i}.tif", data[i], nodata=nodata, blocksize=32)) for i in range(shape[0])]
    else:
        files = [str(write_geotiff(tmp_path / "a.tif", data, nodata=nodata, blocksize=32))]
    ref = expand_sources("a", files, kind="raster", bands=None, band_files=band_files, multiple=False, nodata=nodata,
                         resampling="nearest", normalise=NormaliseSpec())[0]
    grid = Grid(shape[2], shape[1])
    monkeypatch.setattr(sources, "STRIP_BYTES", 4096)  # a few rows per strip
    from rasterio._env import get_gdal_config

    cache = get_gdal_config("GDAL_CACHEMAX")
    with open_reader(ref, grid) as reader:
        raw, valid, factor = reader.read_decimated(max_side)
        assert factor > 1
        assert get_gdal_config("GDAL_CACHEMAX") == cache  # the strips' small block cache is undone
        expected_raw, expected_valid = reader._read(Window(0, 0, shape[2], shape[1]), raw.shape[1:])  # GDAL decimates
    np.testing.assert_array_equal(raw, expected_raw)
    np.testing.assert_array_equal(valid, expected_valid)
    if nodata is not None:
        assert not valid.all()


@pytest.mark.parametrize("dtype,nodata", [("uint16", 0), ("int16", -9999), ("uint8", 255)])
def test_nodata_masks_from_the_data_match_gdals(tmp_path, dtype, nodata):
    """Integer bands whose mask is their nodata value: the mask is computed from the data read,
    and must equal the AND of GDAL's per-band masks (pixels at nodata in some bands only included)."""
    from rasterio.windows import Window

    from pipeline.sources import Grid, expand_sources, open_reader
    from pipeline.spec import NormaliseSpec

    rng = np.random.default_rng(3)
    data = rng.integers(0, 200, (3, 70, 90)).astype(dtype)
    data[:, 10:20, 10:30] = nodata  # every band
    data[1, 40:50, 5:60] = nodata  # one band only
    path = write_geotiff(tmp_path / "a.tif", data, nodata=nodata, blocksize=32)
    ref = expand_sources("a", [str(path)], kind="raster", bands=None, band_files=False, multiple=False, nodata=None,
                         resampling="nearest", normalise=NormaliseSpec())[0]
    with open_reader(ref, Grid(90, 70)) as reader, rasterio.open(path) as ds:
        _, valid = reader.read(5, 65, 3, 80)
        gdal = np.logical_and.reduce(ds.read_masks([1, 2, 3], window=Window(3, 5, 77, 60)) > 0)
    np.testing.assert_array_equal(valid, gdal)
    assert not valid[10:15].all() and not valid[40:45].all()
