"""Property (issue 11): any sequence of kills (at a model call or at any rename: exports, stores,
status parts), damaged or deleted outputs and work-store chunks, left-over temporaries and resumes
ends, after one more resume, with the outputs of an undisturbed run, byte for byte, and a run
directory that agrees with the disk (`verify_run` finds nothing, every item done, no work left).

A kill is simulated in-process by an exception that no engine code catches (BaseException), so
everything the run had not yet recorded is lost as in a kill; the number of examples is bounded so
the test runs in well under a minute or two.
"""
from __future__ import annotations

import pathlib
import shutil
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline import fsio
from pipeline.runners.local import run_job
from pipeline.spec import parse_job
from pipeline.status import run_status
from pipeline.verify import verify_run
from pipeline_support import ContextFuser, output_files, pair_job, write_pair_archive


class SimulatedKill(BaseException):
    """The process dies here: nothing below catches it."""


class KilledAtCall(ContextFuser):
    def __init__(self, kill_at: int | None):
        super().__init__()
        self.kill_at, self.calls = kill_at, 0

    def fuse_batch(self, a, b, task="vif", *, return_prompts=False):
        self.calls += 1
        if self.calls == self.kill_at:
            raise SimulatedKill
        return super().fuse_batch(a, b, task, return_prompts=return_prompts)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """Inputs, the job (fixed paths: provenance tags name them) and an undisturbed run's outputs."""
    root = tmp_path_factory.mktemp("property")
    write_pair_archive(root, ("s1", "s2"), (96, 130))
    job = parse_job(pair_job(root, block=64, chunk=32, formats=["cog", "zarr"], model={"batch_size": 64},
                             extra_output={"prompt_maps": True}), base=root)
    run_job(job, fuser=ContextFuser(), progress=False)
    reference = output_files(root / "out")
    _clear(root)
    return root, job, reference


def _clear(root: pathlib.Path) -> None:
    for folder in ("out", "run"):
        shutil.rmtree(root / folder, ignore_errors=True)


def _run(job, *, kill_at_call: int | None = None, kill_at_rename: int | None = None) -> None:
    """A resume that may be killed at its n-th model call or its n-th rename (before it, or after it
    for an even n)."""
    real, renames = fsio.replace_into_place, [0]

    def rename(tmp, dst, **kwargs):
        renames[0] += 1
        if renames[0] == kill_at_rename and kill_at_rename % 2:
            raise SimulatedKill
        real(tmp, dst, **kwargs)
        if renames[0] == kill_at_rename:
            raise SimulatedKill

    with mock.patch.object(fsio, "replace_into_place", rename):
        try:
            run_job(job, fuser=KilledAtCall(kill_at_call), progress=False)
        except SimulatedKill:
            pass


def _damage(root: pathlib.Path, where: str, index: int, how: str) -> None:
    folder = root / ("out" if where == "output" else "run/work")
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
    if not files:
        return
    path = files[index % len(files)]
    data = path.read_bytes()
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif data:
        at = index % len(data)
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])


def _plant_temporary(root: pathlib.Path, index: int) -> None:
    """What a kill leaves beside an output: a half-written temporary."""
    name = ("s1.tif", "s2.zarr", "s1.prompts.tif", "s2.stac.json")[index % 4]
    (root / "out").mkdir(exist_ok=True)
    (root / "out" / f".{name}.tmp-dead{index:04d}").write_bytes(b"half written")


step = st.one_of(
    st.tuples(st.just("kill_at_call"), st.integers(1, 14)),  # 12 blocks: one model call each
    st.tuples(st.just("kill_at_rename"), st.integers(1, 40)),
    st.tuples(st.just("damage"), st.sampled_from(["output", "work"]), st.integers(0, 10_000),
              st.sampled_from(["delete", "truncate", "flip"])),
    st.tuples(st.just("temporary"), st.integers(0, 100)),
)


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=4))
@example(steps=[("kill_at_call", 1), ("damage", "work", 0, "delete")])  # found: a store's coordinates lost
@example(steps=[("kill_at_call", 7), ("damage", "output", 214, "delete")])  # found: a store's zarr.json lost
def test_kills_damage_and_resumes_end_as_an_undisturbed_run(setting, steps):
    root, job, reference = setting
    _clear(root)
    for kind, *args in steps:
        if kind == "kill_at_call":
            _run(job, kill_at_call=args[0])
        elif kind == "kill_at_rename":
            _run(job, kill_at_rename=args[0])
        elif kind == "damage":
            _damage(root, *args)
        else:
            _plant_temporary(root, *args)

    summary = run_job(job, fuser=ContextFuser(), progress=False)
    assert not summary.failures, summary.failures
    assert output_files(root / "out") == reference
    assert verify_run(root / "run")["problems"] == []
    assert {i["status"] for i in run_status(root / "run")["items"]} == {"done"}
    assert not (root / "run" / "work").exists()
