"""The Ray runner on the session's local Ray: same outputs as in-process, and faults survived (a
worker process killed mid-unit, a second node killed mid-run, the driver killed mid-run), one run
per run directory."""
from __future__ import annotations

import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
import zarr
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.manifest import RunDir
from pipeline.runners import local, ray as ray_runner
from pipeline.spec import parse_job
from pipeline_support import ContextFuser, KillOnceFuser, SlowFuser, pair_job, write_geotiff, write_pair_archive

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("ray_cluster")


def _archive(root: pathlib.Path, scenes=("s1", "s2")) -> None:
    write_pair_archive(root, scenes)


def _pixels(path: pathlib.Path) -> np.ndarray:
    if path.suffix == ".zarr":
        group = zarr.open_group(path, mode="r")
        return np.concatenate([group[k][:].astype(np.float64).ravel() for k in ("fused", "prompt_share") if k in group])
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read()


def assert_same_outputs(a: pathlib.Path, b: pathlib.Path) -> None:
    """Same files (no temporaries, nothing extra) with the same pixel values."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert not [n for n in names if ".tmp-" in n]
    for name in names:
        if not name.endswith(".stac.json"):
            np.testing.assert_array_equal(_pixels(a / name), _pixels(b / name), err_msg=name)


def _no_temporaries(root: pathlib.Path) -> None:
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]


def _local_reference(tmp_path: pathlib.Path, **job) -> pathlib.Path:
    doc = pair_job(tmp_path, run_dir=str(tmp_path / "ref_run"), extra_output={"dir": str(tmp_path / "ref_out")}, **job)
    summary = local.run_job(parse_job(doc, base=tmp_path), fuser=ContextFuser(), progress=False)
    assert summary.items_done == 2
    return tmp_path / "ref_out"


# ----------------------------------------------------------------------------- equality
def test_two_workers_equal_the_local_runner_on_every_format_of_the_demo(tmp_path):
    """`tcmoa run jobs/demo.yaml --workers 2` and `--local` with the shipped default model: the same
    pixels in every output (PNG, TIFF, COG, prompt maps, Zarr). One CPU thread per model on both
    sides: float sums depend on the thread count in the last bit."""
    import torch

    assert CliRunner().invoke(main, ["samples", str(tmp_path / "samples"), "-q"]).exit_code == 0
    document = yaml.safe_load((ROOT / "jobs" / "demo.yaml").read_text())
    (tmp_path / "jobs").mkdir()
    for name in ("local", "ray"):
        (tmp_path / "jobs" / f"{name}.yaml").write_text(yaml.safe_dump({**document, "run_dir": f"../runs/{name}"}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = CliRunner().invoke(main, ["run", str(tmp_path / "jobs" / "local.yaml"), "--local", "--json"])
    finally:
        torch.set_num_threads(threads)
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(main, ["run", str(tmp_path / "jobs" / "ray.yaml"), "--workers", "2", "--json"])
    assert second.exit_code == 0, second.output
    summary = json.loads(second.output)
    assert (summary["runner"], summary["workers"], summary["items_done"]) == ("ray", 2, 6)
    formats = {pathlib.Path(p).name.split(".", 1)[1] for o in summary["outputs"].values() for p in o.values()}
    assert formats == {"png", "tiff", "zarr", "tif", "prompts.tif", "stac.json"}
    assert_same_outputs(tmp_path / "runs" / "local" / "outputs", tmp_path / "runs" / "ray" / "outputs")


# ----------------------------------------------------------------------------- faults
def test_a_worker_killed_mid_unit_is_restarted_and_the_outputs_are_unchanged(tmp_path):
    _archive(tmp_path)
    reference = _local_reference(tmp_path)
    job = parse_job(pair_job(tmp_path), base=tmp_path)
    marker = tmp_path / "killed"
    summary = ray_runner.run_job(job, workers=2, progress=False, fuser_factory=functools.partial(KillOnceFuser, str(marker)))
    assert marker.exists()  # a worker process did die with SIGKILL in a unit
    assert summary.items_done == 2 and not summary.failures and summary.units_run == 8
    assert_same_outputs(reference, tmp_path / "out")
    _no_temporaries(tmp_path / "run")
    units = [r for r in RunDir(tmp_path / "run").records().to_pylist() if r["kind"] == "unit"]
    assert len(units) == 8 and len({r["id"] for r in units}) == 8  # each unit recorded once, done


def test_a_second_node_killed_mid_run(tmp_path, ray_cluster):
    """A second local node joins on loopback; the model worker placed on it dies with it. Ray
    restarts the worker on the head node and retries its units: same outputs, no stray file."""
    ray = ray_cluster
    _archive(tmp_path, scenes=("s1", "s2", "s3"))
    reference_doc = pair_job(tmp_path, run_dir=str(tmp_path / "ref_run"), extra_output={"dir": str(tmp_path / "ref_out")})
    local.run_job(parse_job(reference_doc, base=tmp_path), fuser=ContextFuser(), progress=False)
    address = ray.get_runtime_context().gcs_address
    node_dir = pathlib.Path(os.environ.get("TMPDIR", "/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    node = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", address, "--num-cpus", "1", "--block",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=node_dir,
    )
    trace = tmp_path / "trace"
    trace.mkdir()
    try:
        head = ray.get_runtime_context().get_node_id()
        deadline = time.monotonic() + 60
        while not [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != head]:
            assert time.monotonic() < deadline and node.poll() is None, "the second node did not join"
            time.sleep(0.5)
        second = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)
        group = os.getpgid(node.pid)

        def kill_when_busy():
            while not (trace / f"node-{second}").exists():
                time.sleep(0.05)
            os.killpg(group, signal.SIGKILL)  # the node's raylet and services; its workers exit with it

        import threading

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        job = parse_job(pair_job(tmp_path), base=tmp_path)
        summary = ray_runner.run_job(job, workers=2, progress=False,
                                     fuser_factory=functools.partial(SlowFuser, 0.3, str(trace)))
        killer.join(timeout=5)
        assert node.poll() is not None  # the node was killed while the run went on
    finally:
        if node.poll() is None:
            os.killpg(os.getpgid(node.pid), signal.SIGKILL)
        node.wait()
    assert summary.items_done == 3 and not summary.failures, summary.failures
    assert_same_outputs(tmp_path / "ref_out", tmp_path / "out")
    _no_temporaries(tmp_path / "run")


DRIVER = """
import functools, json, pathlib, sys, yaml
from pipeline.runners.ray import run_job
from pipeline.spec import parse_job
from pipeline_support import slow_average
path = pathlib.Path(sys.argv[1])
document = yaml.safe_load(path.read_text())
source = {"path": str(path), "base": str(path.parent), "document": document}
run_job(parse_job(document, base=path.parent), workers=2, address=sys.argv[2], progress=False,
        fuser_factory=functools.partial(slow_average, 2.0), source=source)
"""


def _alive_actors(ray) -> set[str]:
    # Ray's GCS view of the actors (the public state API needs the dashboard, off in tests)
    return {actor_id for actor_id, info in ray._private.state.actors().items() if info.get("State") == "ALIVE"}


def test_driver_killed_mid_run_then_resume_runs_only_the_unfinished_units(tmp_path, ray_cluster):
    _archive(tmp_path, scenes=("s1", "s2", "s3"))
    doc = pair_job(tmp_path, model={"weights": "baseline:average", "batch_size": 4})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    address = ray_cluster.get_runtime_context().gcs_address
    actors_before = _alive_actors(ray_cluster)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "job.yaml"), address], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "out").glob("*.stac.json")):  # an item exported: its records are written
            assert time.monotonic() < deadline and driver.poll() is None, "the driver finished or died too early"
            time.sleep(0.1)
        # one run at a time: a second run on the active run directory is refused
        second = CliRunner().invoke(main, ["run", str(tmp_path / "job.yaml"), "--local", "--quiet"])
        assert second.exit_code == 3 and "in use by another run" in second.output  # 3: cannot proceed (pipeline/errors.py)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    # Ray reaps a dead driver's workers asynchronously (up to a second here, more under load) and
    # they may still be writing blocks meanwhile; a real resume comes later than that, so wait
    deadline = time.monotonic() + 60
    while _alive_actors(ray_cluster) - actors_before:
        assert time.monotonic() < deadline, "the killed driver's workers outlived it by a minute"
        time.sleep(0.2)
    before = RunDir(tmp_path / "run").records().to_pylist()
    done_before = {r["id"] for r in before if r["kind"] == "unit" and r["status"] == "done"}
    assert 0 < len(done_before) < 12

    resumed = CliRunner().invoke(main, ["resume", str(tmp_path / "run"), "--json"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.output)
    assert summary["items_done"] + summary["items_skipped"] == 3 and not summary["failures"]
    records = RunDir(tmp_path / "run").records().to_pylist()
    last_run = records[-1]["run_id"]
    ran_again = {r["id"] for r in records if r["kind"] == "unit" and r["run_id"] == last_run}
    all_units = {r["unit_id"] for r in RunDir(tmp_path / "run").read_table("plan.parquet").to_pylist()}
    assert ran_again == all_units - done_before and summary["units_run"] == len(ran_again)
    _no_temporaries(tmp_path)
    for scene in ("s1", "s2", "s3"):
        assert (tmp_path / "out" / f"{scene}.tif").exists()


def test_an_item_that_fails_is_recorded_and_the_others_finish(tmp_path):
    """An input that is nodata everywhere fails its item in a Ray task (preparation); the error is
    recorded with the file named and a traceback, and the other item is done."""
    _archive(tmp_path)
    write_geotiff(tmp_path / "s2_b.tif", np.zeros((200, 230), np.uint16), nodata=0)
    job = parse_job(pair_job(tmp_path), base=tmp_path)
    summary = ray_runner.run_job(job, workers=2, progress=False, fuser_factory=ContextFuser)
    assert summary.items_done == 1 and [f["item_id"] for f in summary.failures] == ["s2"]
    assert "s2_b.tif" in summary.failures[0]["error"]
    failed = [r for r in RunDir(tmp_path / "run").records().to_pylist() if r["status"] == "failed"]
    assert failed and all(r["item_id"] == "s2" and r["traceback"] for r in failed)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s1.stac.json", "s1.tif", "s1.zarr"]
