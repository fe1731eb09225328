"""Bad input: a clear error naming the file, the item marked failed, every other item done,
nothing partial left behind."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import rasterio
from PIL import Image

from pipeline.runners.local import run_job
from pipeline.spec import parse_job
from pipeline_support import SourceAFuser, assert_only_the_bad_item_failed, pair_job, random_raster, write_geotiff

GOOD = ("good1", "good2")


def _archive(root: pathlib.Path, shape=(70, 90)) -> None:
    rng = np.random.default_rng(0)
    for scene in (*GOOD, "bad"):
        write_geotiff(root / f"{scene}_a.tif", random_raster(rng, (3, *shape), "uint16"))
        write_geotiff(root / f"{scene}_b.tif", random_raster(rng, shape, "uint16"))


def _run(root: pathlib.Path, **job_changes):
    doc = pair_job(root, tile=112, overlap=32, block=64, formats=["cog", "zarr"], **job_changes)
    return run_job(parse_job(doc, base=root), fuser=SourceAFuser(), progress=False)


def _check(root: pathlib.Path, summary, bad_file: pathlib.Path | str, *words: str, out_dir: pathlib.Path | None = None) -> None:
    assert_only_the_bad_item_failed(summary, root, str(bad_file), *words, out_dir=out_dir)


def test_truncated_file(tmp_path):
    _archive(tmp_path)
    bad = tmp_path / "bad_b.tif"
    write_geotiff(bad, random_raster(np.random.default_rng(1), (70, 90), "uint16"), tiled=False)
    with open(bad, "r+b") as fh:
        fh.truncate(bad.stat().st_size // 2)  # the header survives, half of the pixel data does not
    _check(tmp_path, _run(tmp_path), bad, "truncated")  # found from the header, before any read


def test_empty_file(tmp_path):
    _archive(tmp_path)
    bad = tmp_path / "bad_a.tif"
    bad.write_bytes(b"")
    _check(tmp_path, _run(tmp_path), bad, "empty")


def test_non_image_file(tmp_path):
    _archive(tmp_path)
    bad = tmp_path / "bad_b.tif"
    bad.write_text("station,temperature\nA,21.5\n" * 50)
    _check(tmp_path, _run(tmp_path), bad, "not an image")


def test_wrong_band_count(tmp_path):
    _archive(tmp_path)
    bad = tmp_path / "bad_a.tif"
    write_geotiff(bad, random_raster(np.random.default_rng(2), (2, 70, 90), "uint16"))
    summary = _run(tmp_path)
    _check(tmp_path, summary, bad, "2 bands")


def test_requested_band_missing(tmp_path):
    _archive(tmp_path)
    bad = tmp_path / "bad_b.tif"
    doc_sources = [{"role": "a", "pattern": "{scene}_a.tif", "normalise": "dtype", "bands": [1, 2, 3]},
                   {"role": "b", "pattern": "{scene}_b.tif", "normalise": "dtype", "bands": [1, 2, 3]}]
    for scene in GOOD:
        write_geotiff(tmp_path / f"{scene}_b.tif", random_raster(np.random.default_rng(3), (3, 70, 90), "uint16"))
    summary = _run(tmp_path, sources=doc_sources)
    _check(tmp_path, summary, bad, "band(s) [2, 3] requested", "1 band")


def test_sources_that_do_not_overlap(tmp_path):
    _archive(tmp_path)
    bad = tmp_path / "bad_b.tif"
    write_geotiff(bad, random_raster(np.random.default_rng(4), (70, 90), "uint16"),
                  transform=rasterio.transform.from_origin(900000, 5600000, 30, 30))
    _check(tmp_path, _run(tmp_path), bad, "does not overlap")


def test_all_nodata_source(tmp_path):
    _archive(tmp_path)
    bad = tmp_path / "bad_b.tif"
    write_geotiff(bad, np.zeros((70, 90), np.uint16), nodata=0)
    _check(tmp_path, _run(tmp_path, normalise_b="percentile"), bad, "nodata")


def test_unwritable_output_directory(tmp_path):
    _archive(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    blocked = out / "bad"
    blocked.write_text("a file where the item's output folder should be")
    summary = _run(tmp_path, extra_output={"name": "{item}/fused"})
    assert summary.items_done == 2
    assert [f["item_id"] for f in summary.failures] == ["bad"]
    assert str(blocked) in summary.failures[0]["error"] and "not writable" in summary.failures[0]["error"]
    assert blocked.read_text().startswith("a file")  # untouched
    for scene in GOOD:
        assert (out / scene / "fused.tif").is_file()
    assert not any(".tmp-" in p.name for p in out.rglob("*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_directory(tmp_path):
    _archive(tmp_path)
    out = tmp_path / "out"
    (out / "bad").mkdir(parents=True)
    os.chmod(out / "bad", 0o500)
    try:
        summary = _run(tmp_path, extra_output={"name": "{item}/fused"})
    finally:
        os.chmod(out / "bad", 0o700)
    assert summary.items_done == 2 and summary.failures[0]["item_id"] == "bad"
    assert str(out / "bad") in summary.failures[0]["error"]


def test_photos_of_different_sizes(tmp_path):
    rng = np.random.default_rng(5)
    for scene, size in (("good1", (60, 80)), ("good2", (60, 80)), ("bad", (60, 80))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / f"{scene}_a.png")
        other = (61, 80) if scene == "bad" else size
        Image.fromarray(rng.integers(0, 255, other, dtype=np.uint8)).save(tmp_path / f"{scene}_b.png")
    summary = _run(tmp_path, a_pattern="{scene}_a.png", b_pattern="{scene}_b.png",
                   extra_output={"formats": ["png", "zarr"]})
    assert summary.items_done == 2 and summary.failures[0]["item_id"] == "bad"
    error = summary.failures[0]["error"]
    assert str(tmp_path / "bad_b.png") in error and "80x61" in error and "same size" in error
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["good1.png", "good2.png"]


def test_header_claiming_a_huge_image(tmp_path):
    _archive(tmp_path)
    bad = tmp_path / "bad_b.tif"
    with rasterio.open(bad, "w", driver="GTiff", width=200_000, height=200_000, count=1, dtype="uint16",
                       crs="EPSG:32632", transform=rasterio.transform.from_origin(500000, 5600000, 30, 30),
                       tiled=True, compress="deflate", sparse_ok=True):
        pass
    assert bad.stat().st_size < 10_000_000  # a small file whose header claims 40 Gpx
    _check(tmp_path, _run(tmp_path), bad, "200000 x 200000", "max_pixels")


def test_photo_header_claiming_a_huge_image(tmp_path):
    rng = np.random.default_rng(6)
    for scene in (*GOOD, "bad"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{scene}_a.png")
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(tmp_path / f"{scene}_b.png")
    bad = tmp_path / "bad_b.png"
    data = bytearray(bad.read_bytes())
    data[16:24] = (60_000).to_bytes(4, "big") + (60_000).to_bytes(4, "big")  # IHDR width, height (CRC now wrong too)
    bad.write_bytes(bytes(data))
    summary = _run(tmp_path, a_pattern="{scene}_a.png", b_pattern="{scene}_b.png", extra_output={"formats": ["png"]})
    assert summary.items_done == 2 and summary.failures[0]["item_id"] == "bad"
    assert str(bad) in summary.failures[0]["error"]
