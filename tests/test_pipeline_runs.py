"""Run directories: deterministic unit ids, resume, retry, fingerprints, lock; and the CLI."""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
import yaml
import zarr
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main
from pipeline.runners.local import run_job
from pipeline.manifest import RunDir, RunDirError
from pipeline.spec import parse_job
from pipeline.status import run_status
from pipeline_support import ContextFuser, SourceAFuser, pair_job, plan_with, write_fast_demo_job, write_pair_archive


def _archive(root: pathlib.Path, scenes=("s1", "s2"), shape=(200, 230)) -> None:
    write_pair_archive(root, scenes, shape)


class CrashingFuser(ContextFuser):
    """Works for `budget` calls, then fails like a lost worker."""

    def __init__(self, budget: int):
        super().__init__()
        self.budget = budget

    def fuse_batch(self, a, b, task="vif", *, return_prompts=False):
        self.calls += 1
        if self.calls > self.budget:
            raise RuntimeError("worker lost")
        return super().fuse_batch(a, b, task, return_prompts=return_prompts)


class CountingContextFuser(ContextFuser):
    def fuse_batch(self, a, b, task="vif", *, return_prompts=False):
        self.calls += 1
        return super().fuse_batch(a, b, task, return_prompts=return_prompts)


def test_unit_ids_are_deterministic_and_follow_inputs_and_parameters(tmp_path):
    _archive(tmp_path)
    doc = pair_job(tmp_path)
    ids = lambda d: [u.unit_id for u in plan_with(parse_job(d, base=tmp_path), SourceAFuser()).all_units]
    first = ids(doc)
    assert first == ids(doc) and len(set(first)) == len(first) == 2 * 4
    assert set(ids({**doc, "tiling": {**doc["tiling"], "overlap": 16}})).isdisjoint(first)
    os.utime(tmp_path / "s2_b.tif", ns=(1, 1))  # a changed input file changes only its item's units
    changed = ids(doc)
    assert changed[:4] == first[:4] and set(changed[4:]).isdisjoint(first[4:])


def test_rerun_skips_done_work(tmp_path):
    _archive(tmp_path)
    job = parse_job(pair_job(tmp_path), base=tmp_path)
    assert run_job(job, fuser=SourceAFuser(), progress=False).items_done == 2
    fuser = SourceAFuser()
    again = run_job(job, fuser=fuser, progress=False)
    assert (again.items_skipped, again.units_run, fuser.calls) == (2, 0, 0)


def test_crash_then_retry_failed_finishes_only_what_is_missing(tmp_path):
    _archive(tmp_path)
    straight_doc = pair_job(tmp_path, run_dir=str(tmp_path / "straight"), extra_output={"dir": str(tmp_path / "o1")})
    run_job(parse_job(straight_doc, base=tmp_path), fuser=ContextFuser(), progress=False)

    job = parse_job(pair_job(tmp_path), base=tmp_path)
    units = plan_with(job, SourceAFuser()).all_units
    calls = [-(-u.tiles // job.model.batch_size) for u in units]  # model calls per block
    crashed = run_job(job, fuser=CrashingFuser(budget=sum(calls[:6])), progress=False)  # dies in block 7 of 8
    assert crashed.items_done == 1 and crashed.failures[0]["item_id"] == "s2"
    assert "worker lost" in crashed.failures[0]["error"]
    assert not (tmp_path / "out" / "s2.tif").exists()  # no partial output

    skipped = run_job(job, fuser=CountingContextFuser(), progress=False)
    assert skipped.failures and "--retry-failed" in skipped.failures[0]["error"]

    fuser = CountingContextFuser()
    retried = run_job(job, fuser=fuser, retry_failed=True, progress=False)
    assert retried.items_done == 1 and retried.units_skipped == 4 + 2 and retried.units_run == 2
    for name in ("s1.zarr", "s2.zarr"):
        a = zarr.open_group(tmp_path / "o1" / name, mode="r")["fused"][:]
        b = zarr.open_group(tmp_path / "out" / name, mode="r")["fused"][:]
        np.testing.assert_array_equal(a, b)
    report = run_status(tmp_path / "run")
    assert report["counts"] == {"done": 2}


def test_done_records_are_not_trusted_without_their_store(tmp_path):
    _archive(tmp_path, scenes=("s1",))
    job = parse_job(pair_job(tmp_path), base=tmp_path)
    calls = [-(-u.tiles // job.model.batch_size) for u in plan_with(job, SourceAFuser()).all_units]
    run_job(job, fuser=CrashingFuser(budget=sum(calls[:2])), progress=False)
    import shutil

    shutil.rmtree(tmp_path / "run" / "work")
    fuser = CountingContextFuser()
    summary = run_job(job, fuser=fuser, retry_failed=True, progress=False)
    assert summary.items_done == 1 and summary.units_run == 4  # the two done blocks are recomputed


def test_another_job_is_refused_on_a_run_directory(tmp_path):
    _archive(tmp_path, scenes=("s1",))
    run_job(parse_job(pair_job(tmp_path), base=tmp_path), fuser=SourceAFuser(), progress=False)
    other = parse_job(pair_job(tmp_path, overlap=16), base=tmp_path)
    with pytest.raises(RunDirError, match=r"belongs to job 'test'.*tiling\.overlap"):
        run_job(other, fuser=SourceAFuser(), progress=False)


def test_run_directory_lock(tmp_path):
    first = RunDir(tmp_path)
    first.lock()
    try:
        with pytest.raises(RunDirError, match="in use by another run"):
            RunDir(tmp_path).lock()
    finally:
        first.unlock()
    RunDir(tmp_path).lock()


def test_manifest_tables(tmp_path):
    _archive(tmp_path)
    summary = run_job(parse_job(pair_job(tmp_path), base=tmp_path), fuser=SourceAFuser(), progress=False)
    run_dir = RunDir(tmp_path / "run")
    plan = run_dir.read_table("plan.parquet").to_pylist()
    assert len(plan) == 8 and {"unit_id", "y0", "x1", "tiles", "pixels"} <= set(plan[0])
    records = run_dir.records().to_pylist()
    units = [r for r in records if r["kind"] == "unit"]
    assert len(units) == 8 and all(r["status"] == "done" and len(r["checksum"]) == 64 for r in units)
    assert all(json.loads(r["timings"])["tiles"] > 0 for r in units)
    items = [r for r in records if r["kind"] == "item"]
    assets = json.loads(items[0]["info"])["assets"]
    from pipeline.fsio import sha256_file

    assert assets["cog"]["sha256"] == sha256_file(pathlib.Path(assets["cog"]["path"]))
    assert summary.pixels == 2 * 200 * 230


# ----------------------------------------------------------------------------- CLI
def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_samples_and_the_demo_job(tmp_path):
    """`tcmoa samples` + jobs/demo.yaml (with a fast baseline fuser instead of the model)."""
    result = _invoke("samples", tmp_path / "samples", "--quiet")
    assert result.exit_code == 0 and (tmp_path / "samples" / "geo" / "scene1_optical.tif").exists()
    write_fast_demo_job(tmp_path / "jobs")

    dry = _invoke("run", tmp_path / "jobs" / "demo.yaml", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.output)
    assert plan["totals"]["items"] == 6 and plan["collections"]["focus"]["model_calls"] > 0

    run = _invoke("run", tmp_path / "jobs" / "demo.yaml", "--local", "--json")
    assert run.exit_code == 0, run.output
    summary = json.loads(run.output)
    assert summary["items_done"] == 6 and not summary["failures"]
    outputs = tmp_path / "runs" / "demo" / "outputs"
    chelsea = Image.open(outputs / "chelsea.png")
    assert chelsea.size == (451, 300)  # EXIF orientation applied: upright
    assert (outputs / "camera.tiff").exists() and (outputs / "scene1.tif").exists()

    status = _invoke("status", tmp_path / "runs" / "demo", "--json")
    assert json.loads(status.output)["counts"] == {"done": 6}
    table = _invoke("status", tmp_path / "runs" / "demo")
    assert "geo/scene1" in table.output and "6 done" in table.output


def test_fuse_one_pair_with_the_tiny_model(tmp_path):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (90, 100, 3), dtype=np.uint8)).save(tmp_path / "vis.png")
    Image.fromarray(rng.integers(0, 255, (90, 100), dtype=np.uint8)).save(tmp_path / "ir.png")
    result = _invoke("fuse", tmp_path / "vis.png", tmp_path / "ir.png", "-o", tmp_path / "fused.png",
                     "--task", "vif=0.7,mef=0.3", "--weights", "random:tiny", "--tile", "224", "--overlap", "56", "--quiet")
    assert result.exit_code == 0, result.output
    fused = np.asarray(Image.open(tmp_path / "fused.png"))
    assert fused.shape == (90, 100, 3) and fused.std() > 0
    assert json.loads((tmp_path / "fused.stac.json").read_text())["assets"]["png"]["type"] == "image/png"


def test_fuse_guided_reconstruction_keeps_the_dominant_sources_pixels(tmp_path):
    """`--reconstruction guided` with prompts forced to source A (alpha 0, beta 0.5) writes A's pixels."""
    rng = np.random.default_rng(4)
    vis = rng.integers(0, 255, (90, 100, 3), dtype=np.uint8)
    Image.fromarray(vis).save(tmp_path / "vis.png")
    Image.fromarray(rng.integers(0, 255, (90, 100), dtype=np.uint8)).save(tmp_path / "ir.png")
    result = _invoke("fuse", tmp_path / "vis.png", tmp_path / "ir.png", "-o", tmp_path / "fused.png",
                     "--weights", "random:tiny", "--reconstruction", "guided", "--alpha", "0", "--beta", "0.5",
                     "--tile", "224", "--overlap", "56", "--quiet")
    assert result.exit_code == 0, result.output
    assert np.abs(np.asarray(Image.open(tmp_path / "fused.png")).astype(int) - vis).max() <= 1


def test_job_spec_model_reconstruction(tmp_path):
    from pipeline.runners.local import load_model_fuser
    from pipeline.spec import SpecError, parse_job

    _archive(tmp_path, scenes=("s1",), shape=(60, 70))
    job = parse_job(pair_job(tmp_path, model={"weights": "random:tiny", "reconstruction": "guided"}), base=tmp_path)
    assert job.model.reconstruction == "guided" and load_model_fuser(job.model).reconstruction == "guided"
    untrained = parse_job(pair_job(tmp_path, model={"weights": "random:tiny"}), base=tmp_path).model
    assert untrained.reconstruction == "auto" and load_model_fuser(untrained).reconstruction == "decoder"
    from tcmoa.inference import DEFAULT_WEIGHTS

    if DEFAULT_WEIGHTS.is_file():  # the shipped default records guided, and auto follows it
        shipped = parse_job(pair_job(tmp_path, model={"weights": "default"}), base=tmp_path).model
        assert shipped.reconstruction == "auto" and load_model_fuser(shipped).reconstruction == "guided"
    with pytest.raises(SpecError, match="reconstruction"):
        parse_job(pair_job(tmp_path, model={"reconstruction": "pyramid"}), base=tmp_path)


def test_guided_outputs_of_another_selection_version_are_other_units(tmp_path):
    """New guided selection rules change the outputs of the same weights: a resumed run must redo
    its units rather than mix two versions' tiles. Decoder outputs are not affected."""
    import dataclasses

    from pipeline.plan import plan_job
    from tcmoa.inference import model_info
    from tcmoa.interface import Placement

    _archive(tmp_path, scenes=("s1",), shape=(60, 70))
    job = parse_job(pair_job(tmp_path, model={"weights": "random:tiny", "reconstruction": "guided"}), base=tmp_path)
    info = model_info("random:tiny")
    ids = lambda j, i: [u.unit_id for u in plan_job(j, i, Placement("cpu", "fp32")).all_units]
    assert info.guided_version is not None
    newer = dataclasses.replace(info, guided_version=info.guided_version + 1)
    assert set(ids(job, newer)).isdisjoint(ids(job, info))
    decoder = dataclasses.replace(job, model=dataclasses.replace(job.model, reconstruction="decoder"))
    assert ids(decoder, newer) == ids(decoder, info)


def test_invalid_job_file_names_the_file_and_field(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text(yaml.safe_dump({"name": "x", "task": "fusion", "discover": {"type": "glob"},
                                   "sources": [{"role": "a", "pattern": "*.tif"}], "tiling": {"tile": 448, "overlapp": 10}}))
    result = CliRunner().invoke(main, ["run", str(job)])
    assert result.exit_code == 2
    assert str(job) in result.output
    assert "task: expected one of vif, mef, mff" in result.output
    assert "tiling.overlapp: unknown field (did you mean 'overlap'?)" in result.output


def test_quiet_and_json_modes(tmp_path):
    _archive(tmp_path, scenes=("s1",), shape=(60, 70))
    doc = pair_job(tmp_path, model={"weights": "baseline:average"})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    quiet = CliRunner().invoke(main, ["run", str(tmp_path / "job.yaml"), "--local", "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""
    again = CliRunner().invoke(main, ["run", str(tmp_path / "job.yaml"), "--local", "--json"])
    assert json.loads(again.output)["items_skipped"] == 1


def test_units_are_plain_data_and_idempotent(tmp_path):
    """What a Ray actor will get: a unit, its item and the item's radiometry pickle, and running a
    unit twice writes the same block with the same checksum."""
    import pickle

    from pipeline.items import prepare_item, store_path, stretches_from_json
    from pipeline.unit import process_unit

    _archive(tmp_path, scenes=("s1",))
    job = parse_job(pair_job(tmp_path), base=tmp_path)
    fuser = ContextFuser()
    plan = plan_with(job, fuser)
    item = plan.items[0]
    work_dir = RunDir(job.run_dir).work_dir
    stretches = stretches_from_json(prepare_item(plan.run_info, item, work_dir))
    unit = plan.units[item.key][1]
    shipped_unit, shipped_item, shipped_stretches = pickle.loads(pickle.dumps((unit, item, stretches)))
    first = process_unit(shipped_unit, shipped_item, shipped_stretches, store_path(work_dir, item), fuser)
    second = process_unit(unit, item, stretches, store_path(work_dir, item), fuser)
    assert first["checksum"] == second["checksum"]
    data = zarr.open_group(store_path(work_dir, item), mode="r")["fused"][:]
    own = np.zeros(data.shape[1:], bool)
    own[unit.block.y0:unit.block.y1, unit.block.x0:unit.block.x1] = True
    assert data[:, own].any() and not data[:, ~own].any()  # it wrote its own block and nothing else


def test_temporaries_of_a_killed_run_are_cleaned(tmp_path):
    _archive(tmp_path, scenes=("s1",))
    out = tmp_path / "out"
    out.mkdir()
    (out / ".s1.tif.tmp-dead0001").write_bytes(b"half a COG")
    (out / ".s1.zarr.tmp-dead0002").mkdir()
    run_job(parse_job(pair_job(tmp_path), base=tmp_path), fuser=SourceAFuser(), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["s1.stac.json", "s1.tif", "s1.zarr"]
