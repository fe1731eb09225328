"""The resume rules (one pure function), scheduled runs over a growing archive, --only, and a
writer failing as on a full disk."""
from __future__ import annotations

import errno
import json
import pathlib

import numpy as np
import pytest

from pipeline import plan as plan_module
from pipeline import unit as unit_module
from pipeline import fsio, writers
from pipeline.manifest import RunDir
from pipeline.runners.local import run_job
from pipeline.schedule import Observed, Options, schedule
from pipeline.spec import parse_job
from pipeline_support import ContextFuser, SourceAFuser, pair_job, plan_with, random_raster, write_geotiff, write_pair_archive


def _archive(root: pathlib.Path, scenes=("s1", "s2"), shape=(200, 230), seed=0) -> None:
    rng = np.random.default_rng(seed)
    for scene in scenes:
        write_geotiff(root / f"{scene}_a.tif", random_raster(rng, (3, *shape), "uint16"))
        write_geotiff(root / f"{scene}_b.tif", random_raster(rng, shape, "uint16"))


def _record(kind, rid, status, **extra):
    return {"kind": kind, "id": rid, "status": status, "error": "boom" if status == "failed" else None, "info": None, **extra}


# ----------------------------------------------------------------------------- the pure rules
def test_schedule_rules(tmp_path):
    _archive(tmp_path)
    plan = plan_with(parse_job(pair_job(tmp_path), base=tmp_path), SourceAFuser())
    one, two = plan.items
    u1, u2 = plan.units[one.key], plan.units[two.key]
    fresh = schedule(plan, {}, Observed())
    assert [(w.state, len(w.units), w.radiometry, w.export) for w in fresh.items] == [("run", 4, None, True)] * 2

    latest = {
        ("prepare", one.prepare_id): _record("prepare", one.prepare_id, "done", info='{"radiometry": []}'),
        ("unit", u1[0].unit_id): _record("unit", u1[0].unit_id, "done"),
        ("unit", u1[1].unit_id): _record("unit", u1[1].unit_id, "failed"),
        ("item", two.finalize_id): _record("item", two.finalize_id, "done"),
    }
    intact = Observed(outputs_verified=frozenset({two.finalize_id}), stores_intact=frozenset({one.prepare_id}),
                      blocks_verified=frozenset({u1[0].unit_id}))
    work = schedule(plan, latest, intact)
    assert work.items[0].state == "failed" and "--retry-failed" in work.items[0].error
    assert work.items[1].state == "done"  # exported, outputs verified: not touched again
    retry = schedule(plan, latest, intact, Options(retry_failed=True)).items[0]
    assert (retry.state, retry.units, retry.units_done, retry.radiometry) == ("run", tuple(u1[1:]), 1, '{"radiometry": []}')
    # without its store the item is prepared afresh and its done records do not count
    lost = schedule(plan, latest, Observed(outputs_verified=frozenset({two.finalize_id})), Options(retry_failed=True)).items[0]
    assert (lost.units, lost.units_done, lost.radiometry) == (tuple(u1), 0, None)
    # outputs gone from disk: the item runs again
    assert schedule(plan, latest, Observed(), Options(retry_failed=True)).items[1].state == "run"
    # --only: an item by key, or units by id prefix
    only_two = schedule(plan, {}, Observed(), Options(only=frozenset({two.key})))
    assert [w.state for w in only_two.items] == ["excluded", "run"]
    some = schedule(plan, {}, Observed(), Options(only=frozenset({u2[3].unit_id[:10]}))).items[1]
    assert some.units == (u2[3],) and not some.export  # a partial item is not exported
    # a done block whose checksum the store no longer gives runs again
    unverified = Observed(stores_intact=frozenset({one.prepare_id}))
    assert schedule(plan, latest, unverified, Options(retry_failed=True)).items[0].units == tuple(u1)
    # outputs that may not be written: refused before any work
    refused = schedule(plan, {}, Observed(refused={one.finalize_id: "output x: refusing"})).items[0]
    assert (refused.state, refused.stage, refused.error) == ("failed", "outputs", "output x: refusing")
    assert schedule(plan, latest, intact) == work  # pure: same answer for the same inputs


# ----------------------------------------------------------------------------- scheduled archives
def test_a_grown_archive_runs_only_its_new_items_without_rereading_the_old(tmp_path, monkeypatch):
    _archive(tmp_path, scenes=("s1", "s2"))
    doc = pair_job(tmp_path)
    first = run_job(parse_job(doc, base=tmp_path), fuser=ContextFuser(), progress=False)
    assert first.items_done == 2
    _archive(tmp_path, scenes=("s3",), seed=1)  # the archive gained an item

    opened: list[str] = []
    real_inspect, real_open = plan_module.inspect, unit_module.open_reader
    monkeypatch.setattr(plan_module, "inspect", lambda ref: opened.append(ref.files[0]) or real_inspect(ref))
    monkeypatch.setattr(unit_module, "open_reader", lambda ref, grid: opened.append(ref.files[0]) or real_open(ref, grid))
    fuser = ContextFuser()
    second = run_job(parse_job(doc, base=tmp_path), fuser=fuser, progress=False)
    assert (second.items_done, second.items_skipped, second.units_run) == (1, 2, 4)
    assert opened and {pathlib.Path(f).name[:2] for f in opened} == {"s3"}  # old files not opened, not even their headers
    records = RunDir(tmp_path / "run").records().to_pylist()
    runs = {r["run_id"] for r in records}
    assert len(runs) == 2  # the manifest was appended to, not rewritten
    assert {r["item_id"] for r in records if r["run_id"] == records[-1]["run_id"]} == {"s3"}
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["s1.tif", "s2.tif", "s3.tif"]


def test_only_runs_the_named_item(tmp_path):
    _archive(tmp_path)
    summary = run_job(parse_job(pair_job(tmp_path), base=tmp_path), fuser=ContextFuser(), progress=False,
                      options=Options(only=frozenset({"test/s2"})))
    assert (summary.items_done, summary.units_run) == (1, 4) and list(summary.outputs) == ["test/s2"]


# ----------------------------------------------------------------------------- a full disk
@pytest.mark.parametrize("stage", ["block", "export"])
def test_a_full_disk_leaves_no_corrupt_output_and_a_manifest_that_agrees(tmp_path, monkeypatch, stage):
    _archive(tmp_path)
    calls = {"n": 0}
    if stage == "block":
        real = writers.write_block

        def full(path, block, fused, prompts, *rest):
            calls["n"] += 1
            if calls["n"] == 6:  # the second block of the second item
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real(path, block, fused, prompts, *rest)

        monkeypatch.setattr(writers, "write_block", full)
    else:
        import rasterio.shutil

        real_copy = rasterio.shutil.copy

        def full_copy(src, dst, **kwargs):  # half a COG is written, then the disk is full
            calls["n"] += 1
            if calls["n"] == 2:
                pathlib.Path(dst).write_bytes(b"II*\x00 half a file")
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))
            return real_copy(src, dst, **kwargs)

        monkeypatch.setattr(rasterio.shutil, "copy", full_copy)
    summary = run_job(parse_job(pair_job(tmp_path), base=tmp_path), fuser=ContextFuser(), progress=False)
    assert summary.items_done == 1 and summary.failures[0]["item_id"] == "s2"
    assert "No space left" in summary.failures[0]["error"]
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == ["s1.stac.json", "s1.tif", "s1.zarr"]  # nothing of s2, no temporaries
    # the manifest agrees with the disk: every recorded output exists with its recorded checksum
    for record in RunDir(tmp_path / "run").records().to_pylist():
        if record["kind"] == "item" and record["status"] == "done":
            for asset in json.loads(record["info"])["assets"].values():
                assert fsio.sha256_output(pathlib.Path(asset["path"])) == asset["sha256"]
        if record["item_id"] == "s2" and record["kind"] == "item":
            assert record["status"] == "failed"
    monkeypatch.undo()
    again = run_job(parse_job(pair_job(tmp_path), base=tmp_path), fuser=ContextFuser(), progress=False, retry_failed=True)
    assert again.items_done == 1 and again.items_skipped == 1 and not again.failures
