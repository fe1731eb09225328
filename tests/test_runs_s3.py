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

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.manifest import RunDir, RunDirUnusable
from pipeline.runners.local import run_job
from pipeline.spec import parse_job
from pipeline_support import ContextFuser, pair_job, tcmoa_stand_in, write_pair_archive
from s3_server import Relay

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

    # its paths are relative: the run directory copied out of the bucket verifies on disk
    from pipeline import runstore

    runstore.location(f"s3://{bucket}/runs/pair").fs.get(f"{bucket}/runs/pair/", str(tmp / "copy") + "/", recursive=True)
    copied = CliRunner().invoke(main, ["verify", str(tmp / "copy"), "--json"])
    assert copied.exit_code == 0 and json.loads(copied.output)["checked_outputs"] == 8, copied.output
    refused = CliRunner().invoke(main, ["report", f"s3://{bucket}/runs/pair"])
    assert refused.exit_code == 2 and "copy this one first" in refused.output


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


# ----------------------------------------------------------------------------- kills and damage
def _done_units(run_dir: str) -> int:
    return sum(1 for (kind, _), r in RunDir(run_dir).latest().items() if kind == "unit" and r["status"] == "done")


def _reference(tmp: pathlib.Path, s3) -> dict:
    """The outputs of an undisturbed all-local run of the same job."""
    run_job(_job(tmp, str(tmp / "reference")), fuser=ContextFuser(), progress=False)
    return _pixels(s3, str(tmp / "reference" / "outputs"))


def test_a_killed_run_resumes_with_only_its_unverified_units(tmp, s3_server, monkeypatch):
    monkeypatch.setenv("TCMOA_LEASE_SECONDS", "4")  # the killed run's lease expires soon
    write_pair_archive(tmp, ("s1",), (96, 130))
    bucket = s3_server.bucket()
    run_url = f"s3://{bucket}/run"
    job = _job(tmp, run_url, model={"batch_size": 64})  # one model call per block: 6 blocks
    reference = _reference(tmp, s3_server)

    killed = tcmoa_stand_in("run", _write(tmp, job), 4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _done_units(run_url) == 3  # every block finished before the kill is recorded
    assert s3_server.keys(bucket, "run/.lock") == ["run/.lock"]  # the dead run's lease

    # the dead run's lease is still fresh: refused, saying when it expires
    with pytest.raises(RunDirUnusable, match=r"in use by another run .*lease renewed \d+ s ago; if that run is gone, the lease expires in"):
        run_job(job, fuser=ContextFuser(), progress=False)
    import time

    time.sleep(4.5)
    summary = run_job(job, fuser=ContextFuser(), progress=False)
    assert summary.units_skipped == 3 and summary.units_run == 3 and summary.items_done == 1, summary
    _assert_same(_pixels(s3_server, f"{run_url}/outputs"), reference)


def test_a_damaged_output_object_is_found_by_verify_and_redone_by_resume(tmp, s3_server):
    write_pair_archive(tmp, ("s1", "s2"), (96, 130))
    bucket = s3_server.bucket()
    run_url = f"s3://{bucket}/run"
    job = _job(tmp, run_url)
    reference = _reference(tmp, s3_server)
    assert tcmoa_stand_in("run", _write(tmp, job)).returncode == 0
    first_run = {r["run_id"] for (kind, _), r in RunDir(run_url).latest().items() if kind == "item"}

    client = s3_server.client()
    cog = client.get_object(Bucket=bucket, Key="run/outputs/s1.tif")["Body"].read()
    client.put_object(Bucket=bucket, Key="run/outputs/s1.tif", Body=cog[: len(cog) // 2])  # truncated
    client.delete_object(Bucket=bucket, Key="run/outputs/s2.png")  # deleted
    chunk = next(k for k in s3_server.keys(bucket, "run/outputs/s2.zarr/fused/c/"))
    client.put_object(Bucket=bucket, Key=chunk, Body=b"\0" * 16)  # a Zarr chunk changed

    result = CliRunner().invoke(main, ["verify", run_url])
    assert result.exit_code == 1
    errors = result.stderr
    assert f"{run_url}/outputs/s1.tif: {len(cog) // 2} bytes, {len(cog)} recorded" in errors
    assert f"{run_url}/outputs/s2.png: missing (recorded done)" in errors
    assert f"{run_url}/outputs/s2.zarr" in errors

    resumed = tcmoa_stand_in("resume", run_url)
    assert resumed.returncode == 0, resumed.stderr
    redone = [r for (kind, _), r in RunDir(run_url).latest().items() if kind == "item"]
    assert len(redone) == 2 and not first_run & {r["run_id"] for r in redone}  # both items exported again
    assert CliRunner().invoke(main, ["verify", run_url]).exit_code == 0
    _assert_same(_pixels(s3_server, f"{run_url}/outputs"), reference)


# ----------------------------------------------------------------------------- an endpoint that stops answering
def test_an_endpoint_lost_mid_upload_leaves_nothing_partial(tmp, s3_server, monkeypatch):
    import rasterio

    monkeypatch.setenv("TCMOA_LEASE_SECONDS", "3")
    write_pair_archive(tmp, ("s1", "s2"), (96, 130))
    bucket = s3_server.bucket()
    run_url = f"s3://{bucket}/run"
    job = _job(tmp, run_url)
    reference = _reference(tmp, s3_server)
    # the endpoint dies while s2's COG is being uploaded (s1 is done by then)
    proxy = Relay(s3_server.endpoint, cut_on=f"PUT /{bucket}/run/outputs/s2.tif".encode())
    lost = tcmoa_stand_in("run", _write(tmp, job), env={"AWS_ENDPOINT_URL": proxy.endpoint, "AWS_MAX_ATTEMPTS": "1",
                                                "AWS_RETRY_MODE": "standard"})
    assert proxy.cut.is_set(), lost.stderr
    assert lost.returncode != 0
    lines = [line for line in lost.stderr.splitlines() if line.strip()]
    assert "Traceback" not in lost.stderr and lines, lost.stderr
    assert lost.returncode == 3 and lines[-1].startswith("Error: ") and f"{bucket}/run/" in lines[-1], lost.stderr

    keys = s3_server.keys(bucket, "run/outputs/")
    assert "run/outputs/s2.tif" not in keys  # the interrupted upload never became an object
    assert not [k for k in keys if ".tmp-" in k]
    download = tmp / "after-cut"
    for key in keys:  # whatever is there is whole: every raster reads to its end
        if key.endswith((".tif", ".png")):
            local = download / key
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())
            with rasterio.open(local) as ds:
                np.testing.assert_array_equal(ds.read(), reference[pathlib.Path(key).name])

    # back online: the resume finishes the job, equal to the undisturbed run
    import time

    time.sleep(3.5)  # the lost run's lease expires
    assert tcmoa_stand_in("run", _write(tmp, job)).returncode == 0
    _assert_same(_pixels(s3_server, f"{run_url}/outputs"), reference)


def test_the_ray_runner_writes_a_run_directory_in_a_bucket(tmp, s3_server, ray_cluster):
    """Ray workers share no disk with the driver: work stores, blocks and exports go through the
    bucket only, and give the local run's outputs pixel for pixel."""
    from pipeline.runners import ray as ray_runner

    write_pair_archive(tmp, ("s1", "s2"), (96, 130))
    bucket = s3_server.bucket()
    reference = _reference(tmp, s3_server)
    summary = ray_runner.run_job(_job(tmp, f"s3://{bucket}/ray"), workers=2, progress=False, fuser_factory=ContextFuser)
    assert summary.items_done == 2 and not summary.failures, summary.failures
    _assert_same(_pixels(s3_server, f"s3://{bucket}/ray/outputs"), reference)
    assert not s3_server.keys(bucket, "ray/work/") and s3_server.keys(bucket, "ray/catalog.json")


def test_sources_and_run_directory_in_a_bucket_equal_the_all_local_run(tmp, s3_server):
    """Issue 15's whole case: the archive in a bucket (read through GDAL /vsis3/), the run
    directory and outputs in a bucket, against the same job on local files only."""
    write_pair_archive(tmp / "archive", ("s1", "s2"), (96, 130))
    bucket = s3_server.bucket()
    for path in sorted((tmp / "archive").iterdir()):
        s3_server.client().upload_file(str(path), bucket, f"archive/{path.name}")
    reference = run_job(_job(tmp / "archive", str(tmp / "local-run")), fuser=ContextFuser(), progress=False)
    remote_job = _job(tmp / "archive", f"s3://{bucket}/run", discover={"type": "glob", "root": f"s3://{bucket}/archive"})
    remote = run_job(remote_job, fuser=ContextFuser(), progress=False)
    assert reference.items_done == remote.items_done == 2 and not remote.failures, remote.failures
    _assert_same(_pixels(s3_server, f"s3://{bucket}/run/outputs"), _pixels(s3_server, str(tmp / "local-run" / "outputs")))
    stac = json.loads(s3_server.client().get_object(Bucket=bucket, Key="run/outputs/s1.stac.json")["Body"].read())
    assert sorted(link["href"] for link in stac["links"] if link["rel"] == "derived_from") == [
        f"s3://{bucket}/archive/s1_a.tif", f"s3://{bucket}/archive/s1_b.tif"]


def test_open_run_reads_a_run_directory_in_a_bucket(tmp, s3_server):
    import tcmoa

    write_pair_archive(tmp, ("s1",), (96, 130))
    bucket = s3_server.bucket()
    for run_dir, formats in ((f"s3://{bucket}/zarr", ("zarr",)), (f"s3://{bucket}/cog", ("cog",)), (str(tmp / "local"), ("zarr",))):
        job = _job(tmp, run_dir)
        job = parse_job({**job.document, "output": {**job.document["output"], "formats": list(formats)}}, base=tmp)
        run_job(job, fuser=ContextFuser(), progress=False)
    local = tcmoa.open_run(tmp / "local")["s1"]
    for name in ("zarr", "cog"):
        run = tcmoa.open_run(f"s3://{bucket}/{name}")
        assert list(run) == ["test/s1"] and run.catalog is not None
        assert [i.id for i in run.catalog.get_items(recursive=True)] == ["s1"]
        np.testing.assert_array_equal(run["s1"].fused.values, local.fused.values)


def test_ome_outputs_in_a_bucket_are_uploaded_whole_and_valid(tmp, s3_server):
    """A focus-stack job writing OME-Zarr and OME-TIFF into a run directory in a bucket: the store's
    objects and the file are uploaded (the store metadata last), verify passes, and the copy
    downloaded from the bucket passes the OME-Zarr validator with the input's physical scale."""
    import tifffile
    import yaozarrs

    from pipeline import runstore
    from test_outputs_ome import PHYSICAL_X, PHYSICAL_Y, _stack, _stack_job

    tifffile.imwrite(tmp / "cells.ome.tif", _stack(np.random.default_rng(5)), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": PHYSICAL_X, "PhysicalSizeY": PHYSICAL_Y,
        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    url = f"s3://{s3_server.bucket()}/runs/ome"
    doc = _stack_job(tmp, "{name}.ome.tif", formats=("ome-zarr", "ome-tiff"))
    doc["run_dir"] = url
    del doc["output"]["dir"]  # outputs/ inside the run directory, so in the bucket
    summary = run_job(parse_job(doc, base=tmp), fuser=ContextFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    checked = CliRunner().invoke(main, ["verify", url, "--json"])
    assert checked.exit_code == 0, checked.output
    where = runstore.location(url)
    where.fs.invalidate_cache()
    where.fs.get(f"{where.key}/outputs/", str(tmp / "copy") + "/", recursive=True)
    store = tmp / "copy" / "cells.ome.zarr"
    assert yaozarrs.validate_zarr_store(str(store)).ome_version() == "0.5"
    scale = json.loads((store / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["datasets"][0]
    np.testing.assert_allclose(scale["coordinateTransformations"][0]["scale"], [1.0, PHYSICAL_Y, PHYSICAL_X])
    with tifffile.TiffFile(tmp / "copy" / "cells.ome.tif") as tif:
        assert f'PhysicalSizeX="{PHYSICAL_X}"' in tif.ome_metadata
