"""Run directories in object storage (issue 15, the write side): `run_dir: s3://bucket/prefix`.

Against the session's moto server on loopback (`s3_server`): the same job with its run directory
(and outputs) in a bucket gives the outputs of the all-local run pixel for pixel; a run killed
mid-way resumes with only the unverified units; a second run on an active run prefix is refused;
a truncated or deleted output object is found by `tcmoa verify` and redone by a resume; an
endpoint that stops answering mid-write leaves no partial object.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.manifest import RunDir, RunDirUnusable
from pipeline.runners.local import run_job
from pipeline.spec import parse_job
from pipeline_support import ContextFuser, pair_job, write_pair_archive

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _job_doc(root: pathlib.Path, run_dir: str, **changes) -> dict:
    """The pair job with its run directory at `run_dir` and the outputs in its outputs/ folder."""
    return pair_job(root, block=64, chunk=32, formats=("cog", "zarr", "png"), extra_output={"dir": None, "dtype": "uint8"},
                    run_dir=run_dir, **changes)


def _job(root, run_dir, **changes):
    doc = _job_doc(root, run_dir, **changes)
    doc["output"] = {k: v for k, v in doc["output"].items() if v is not None}
    return parse_job(doc, base=root)


def _pixels(s3, url_or_path: str) -> dict[str, np.ndarray]:
    """Every raster of a run's outputs folder as arrays, by name: COG/PNG bands (rasterio, through
    a download for objects) and the Zarr arrays."""
    import rasterio
    import zarr

    from pipeline import runstore

    out: dict[str, np.ndarray] = {}
    where = runstore.location(url_or_path)
    if isinstance(where, runstore.ObjectPath):
        local = pathlib.Path(os.environ["TCMOA_TEST_TMP"]) / "download"
        where.fs.invalidate_cache()
        where.fs.get(where.key + "/", str(local) + "/", recursive=True)
        where = local
    for path in sorted(where.rglob("*")):
        if path.suffix in (".tif", ".png") and path.is_file():
            with rasterio.open(path) as ds:
                out[path.name] = ds.read()
        elif path.suffix == ".zarr" and path.is_dir():
            group = zarr.open_group(path, mode="r")
            for name in ("fused", "prompt_share"):
                if name in group:
                    out[f"{path.name}/{name}"] = group[name][:]
    return out


def _assert_same(left: dict, right: dict) -> None:
    assert sorted(left) == sorted(right) and left
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("TCMOA_TEST_TMP", str(tmp_path))
    return tmp_path


def test_a_run_directory_in_a_bucket_gives_the_outputs_of_a_local_one(tmp, s3_server):
    write_pair_archive(tmp, ("s1", "s2"), (96, 130))
    bucket = s3_server.bucket()
    local = run_job(_job(tmp, str(tmp / "run")), fuser=ContextFuser(), progress=False)
    remote = run_job(_job(tmp, f"s3://{bucket}/runs/pair"), fuser=ContextFuser(), progress=False)
    assert local.items_done == remote.items_done == 2 and not remote.failures
    _assert_same(_pixels(s3_server, str(tmp / "run" / "outputs")), _pixels(s3_server, f"s3://{bucket}/runs/pair/outputs"))

    keys = s3_server.keys(bucket, "runs/pair/")
    assert "runs/pair/job.json" in keys and "runs/pair/items.parquet" in keys and "runs/pair/plan.parquet" in keys
    assert "runs/pair/.lock" not in keys  # the lease is released at the end
    assert not [k for k in keys if k.startswith("runs/pair/work/")]  # work stores moved into the outputs
    assert not [k for k in keys if ".tmp-" in k]
    # the manifest records paths relative to the run directory
    done = [r for (kind, _), r in RunDir(f"s3://{bucket}/runs/pair").latest().items() if kind == "item"]
    assert {a["path"] for r in done for a in json.loads(r["info"])["assets"].values()} == {
        f"outputs/{s}{suffix}" for s in ("s1", "s2") for suffix in (".tif", ".zarr", ".png", ".stac.json")}

    # a second run skips everything, after verifying the objects (read back: an ETag is no sha256)
    again = run_job(_job(tmp, f"s3://{bucket}/runs/pair"), fuser=ContextFuser(), progress=False)
    assert again.items_skipped == 2 and again.units_run == 0

    # tcmoa status and verify take the URL
    result = CliRunner().invoke(main, ["verify", f"s3://{bucket}/runs/pair", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["checked_outputs"] == 8 and not report["problems"]
    status = CliRunner().invoke(main, ["status", f"s3://{bucket}/runs/pair"])
    assert status.exit_code == 0 and "done" in status.output, status.output


def test_a_second_run_on_an_active_run_prefix_is_refused(tmp, s3_server):
    write_pair_archive(tmp, ("s1",), (96, 130))
    bucket = s3_server.bucket()
    job = _job(tmp, f"s3://{bucket}/run")
    with RunDir(job.run_dir):  # another run holds the prefix
        with pytest.raises(RunDirUnusable, match="in use by another run"):
            run_job(job, fuser=ContextFuser(), progress=False)
        result = CliRunner().invoke(main, ["run", "--local", "--quiet", str(_write(tmp, job))])
        assert result.exit_code == 3 and "in use by another run" in result.output + (result.stderr or "")
    assert run_job(job, fuser=ContextFuser(), progress=False).items_done == 1  # released: it runs


def _write(root: pathlib.Path, job) -> pathlib.Path:
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(job.document))
    return path
