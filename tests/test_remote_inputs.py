"""Inputs in object storage (issue 15, read side): sources, CSV and STAC files and glob prefixes in a
bucket on the local moto server (the `s3_server` fixture), read through GDAL's /vsis3/ and fsspec.

The run directory and the outputs stay local here; a job on the bucket must give, pixel for pixel,
what the same job gives on the local copies of the files, and each way a remote input can fail
(missing bucket or key, access denied, a truncated object, an endpoint that stops answering) must
fail that item alone with a one-line error naming the URL, leaving nothing of it behind.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline import urls
from pipeline.runners.local import run_job
from pipeline.spec import parse_job
from pipeline.status import run_status
from pipeline_support import ContextFuser, output_pixels, random_raster, write_geotiff, write_pair_archive

pytest.importorskip("moto.server")


def _write_archive(root: pathlib.Path) -> None:
    """Three kinds of input, each found its own way: GeoTIFF pairs (glob), photo pairs (CSV with
    relative paths), a focus stack (STAC ItemCollection with a relative href)."""
    write_pair_archive(root / "geo", scenes=("s1", "s2"), shape=(120, 150))
    rng = np.random.default_rng(3)
    (root / "photos").mkdir()
    rows = ["item,dark,bright"]
    for scene in ("p1", "p2"):
        for role in ("dark", "bright"):
            image = Image.fromarray(rng.integers(0, 255, (90, 130, 3), dtype=np.uint8))
            exif = image.getexif()
            exif[0x0112] = 6  # rotated: the EXIF orientation must be applied to the remote photo too
            image.save(root / "photos" / f"{scene}_{role}.jpg", exif=exif, quality=90)
        rows.append(f"{scene},{scene}_dark.jpg,{scene}_bright.jpg")
    (root / "photos" / "items.csv").write_text("\n".join(rows) + "\n")
    (root / "stacks").mkdir()
    stack = random_raster(rng, (3, 100, 120), "uint16")
    tifffile.imwrite(root / "stacks" / "cells.ome.tif", stack, ome=True, metadata={"axes": "ZYX"}, tile=(64, 64))
    collection = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "cells", "geometry": None, "properties": {}, "assets": {"stack": {"href": "cells.ome.tif"}}}]}
    (root / "stacks" / "items.json").write_text(json.dumps(collection))


def _upload(server, bucket: str, folder: pathlib.Path, prefix: str) -> None:
    client = server.client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def _job(root: str, out: pathlib.Path, run: pathlib.Path) -> dict:
    """The same job over an archive at `root` (a folder or an s3:// prefix)."""
    where = lambda *parts: str(urls.join(root, *parts))  # noqa: E731
    return {
        "name": "remote",
        "tiling": {"tile": 112, "overlap": 32, "block": 128},
        "model": {"weights": "random:tiny", "batch_size": 4},
        "run_dir": str(run),
        "collections": [
            {"name": "geo", "task": "vif", "discover": {"type": "glob", "root": where("geo")},
             "sources": [{"role": "a", "pattern": "{scene}_a.tif", "normalise": "dtype"},
                         {"role": "b", "pattern": "{scene}_b.tif", "normalise": "dtype"}],
             "output": {"formats": ["cog", "zarr"], "chunk": 64, "dir": str(out / "geo")}},
            {"name": "photos", "task": "mef", "discover": {"type": "csv", "file": where("photos", "items.csv")},
             "sources": [{"role": "dark", "normalise": "dtype"}, {"role": "bright", "normalise": "dtype"}],
             "output": {"formats": ["png"], "chunk": 64, "dir": str(out / "photos")}},
            {"name": "stacks", "task": "mff", "discover": {"type": "stac", "file": where("stacks", "items.json")},
             "sources": [{"role": "plane", "assets": ["stack"], "normalise": {"method": "fixed", "min": 0, "max": 65535}}],
             "output": {"formats": ["tiff"], "chunk": 64, "dir": str(out / "stacks")}},
        ],
    }


def test_a_job_on_a_bucket_equals_the_same_job_on_local_files(tmp_path, s3_server):
    local_root = tmp_path / "archive"
    _write_archive(local_root)
    bucket = s3_server.bucket()
    _upload(s3_server, bucket, local_root, "archive")

    local = run_job(parse_job(_job(str(local_root), tmp_path / "out_local", tmp_path / "run_local"), base=tmp_path), progress=False)
    remote = run_job(parse_job(_job(f"s3://{bucket}/archive", tmp_path / "out_s3", tmp_path / "run_s3"), base=tmp_path), progress=False)
    assert local.failures == [] and remote.failures == [], (local.failures, remote.failures)
    assert local.items_done == remote.items_done == 5

    expected, got = output_pixels(tmp_path / "out_local"), output_pixels(tmp_path / "out_s3")
    assert sorted(got) == sorted(expected) and len(got) >= 5
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    # the provenance names the objects by URL, intact (never 's3:/bucket/...')
    stac = json.loads((tmp_path / "out_s3" / "photos" / "p1.stac.json").read_text())
    sources = sorted(link["href"] for link in stac["links"] if link["rel"] == "derived_from")
    assert sources == [f"s3://{bucket}/archive/photos/p1_bright.jpg", f"s3://{bucket}/archive/photos/p1_dark.jpg"]

    # a second run finds every item unchanged (object size + ETag) and redoes nothing
    again = run_job(parse_job(_job(f"s3://{bucket}/archive", tmp_path / "out_s3", tmp_path / "run_s3"), base=tmp_path), progress=False)
    assert again.items_skipped == 5 and again.units_run == 0 and again.failures == [], again
