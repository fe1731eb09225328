"""The Ray runner (`tcmoa run`, the default): units shard across model workers on Ray.

- One actor per model worker holds the model once: one GPU each where the cluster has GPUs
  (counted with `ray.cluster_resources()`: asking for a GPU a CPU-only cluster lacks would wait,
  not fail), CPU threads otherwise. Up to `DEPTH` units are in flight per actor and its stages
  take turns by lock, so unit k+1 is read and unit k-1 written while unit k is on the model.
- Item preparation (stretch statistics, the work store) and export (COG, PNG, STAC, the Zarr
  store) are Ray tasks, a few at a time, so the model workers never wait on them.
- The driver is the only writer of status records. An application error in a unit, a
  preparation or an export is recorded and the run goes on; a lost worker process or node is
  retried (actor restarts with `max_restarts`, its calls with `max_task_retries`, tasks with
  `max_retries`), and a unit is recorded done only with the checksum of its block as read back
  from the store.
"""
from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pipeline import runstore
from pipeline.items import export_item, prepare_item, store_path, stretches_from_json
from pipeline.manifest import now
from pipeline.plan import ItemPlan, RunInfo, Unit
from pipeline.runners.session import RunSummary, Session, failure_fields
from pipeline.schedule import ItemWork, Options
from pipeline.spec import JobSpec, ModelSpec
from tcmoa.interface import ModelInfo, Placement

DEPTH = 3  # units in flight per worker: one being read, one on the model, one being written
RETRIES = 3  # restarts of a lost worker, retries of its calls and of item tasks
EMBEDDED_OBJECT_STORE = 256 * 1024 * 1024  # units carry paths and windows, not pixels: a small store will do
PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- the cluster
@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[str]:
    """Use the Ray this process is already connected to, join `address`, or start an embedded
    local Ray for the run (its own temp dir, no dashboard, a small object store), shut down after.
    Yields a description of the cluster."""
    import ray

    if ray.is_initialized():
        yield "the connected Ray cluster"
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
        try:
            yield f"Ray cluster at {address}"
        finally:
            ray.shutdown()
        return
    # socket paths must stay short (< 108 bytes): a short temp dir under /tmp
    temp_dir = tempfile.mkdtemp(prefix="tcmoa-ray-", dir="/tmp")
    path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=EMBEDDED_OBJECT_STORE,
                 _temp_dir=temp_dir, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
        yield "an embedded local Ray"
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _remote_functions() -> dict:
    """Ray's remote wrappers, made per run (importing this module does not import Ray, and a
    wrapper made under one Ray session is not reused under the next one in the same process)."""
    import ray

    @ray.remote(num_cpus=0, max_retries=RETRIES)
    def resolve_placement(device: str, precision: str, weights: str) -> Placement:
        return Placement.resolve(device, precision, weights)

    @ray.remote(num_cpus=0, max_retries=RETRIES)
    def prepare_task(run: RunInfo, item: ItemPlan, work_dir: str) -> str:
        return prepare_item(run, item, work_dir)  # a folder, or a URL (pipeline.runstore)

    @ray.remote(num_cpus=0, max_retries=RETRIES)
    def export_task(run: RunInfo, item: ItemPlan, work_dir: str, radiometry: str, owned: set[str]) -> dict:
        return export_item(run, item, work_dir, stretches_from_json(radiometry), owned)

    return {"placement": resolve_placement, "prepare": prepare_task, "export": export_task,
            "worker": ray.remote(FusionWorker)}


# ----------------------------------------------------------------------------- a model worker
class FusionWorker:
    """A Ray actor (threaded, `DEPTH` calls at a time) holding one model. Each stage of a unit
    takes its own lock: reading (the reader cache is this worker's, used by one thread at a
    time), the model (tiles in, fused tiles out), blending and writing."""

    def __init__(self, model: ModelSpec | None, placement: Placement, threads: int | None,
                 fuser_factory: Callable[[], Any] | None = None):
        from pipeline import runtime
        from pipeline.runners.local import load_model_fuser
        from pipeline.unit import ReaderCache

        runtime.tune_allocator()
        self.threads = threads
        self._set_threads()
        self.fuser = fuser_factory() if fuser_factory is not None else load_model_fuser(model, placement)
        self.readers = ReaderCache()
        self.locks = {stage: threading.Lock() for stage in ("read", "model", "write")}
        self.busy = {stage: 0.0 for stage in self.locks}
        self.first_start: float | None = None
        self.last_end = 0.0
        self.units = 0

    def _set_threads(self) -> None:
        """CPU threads for the model, set in the thread that calls it: the actor's calls run on
        its own threads, and OpenMP's thread count is a per-thread setting."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        with self.locks[name]:
            start = time.perf_counter()
            try:
                yield
            finally:
                self.busy[name] += time.perf_counter() - start

    def run(self, unit: Unit, item: ItemPlan, radiometry: str, store: str) -> dict:
        """Read, fuse, write one unit; returns the block's checksum (read back) and timings."""
        from pipeline.unit import blend_tiles, read_inputs, run_model, write_block

        start = time.perf_counter()
        self.first_start = self.first_start or start
        stretches = stretches_from_json(radiometry)
        with self._stage("read"):
            inputs = read_inputs(unit, item, stretches, self.readers)
        with self._stage("model"):
            self._set_threads()
            tiles = run_model(unit, item, inputs, self.fuser)
        with self._stage("write"):  # blending is CPU work: off the model's stage
            block = blend_tiles(unit, item, stretches, inputs, tiles)
            write_start = time.perf_counter()
            checksum = write_block(runstore.location(store), unit, block, item.zarr_format)
            write_s = time.perf_counter() - write_start
        self.last_end = max(self.last_end, time.perf_counter())
        self.units += 1
        return {"checksum": checksum, "timings": {**inputs.timings, **block.timings, "write_s": write_s,
                                                  "worker": os.getpid()}}

    def stats(self) -> dict:
        """Seconds each stage held its lock and the wall time from the first unit's start to the
        last unit's end: the model's busy fraction is model_s / wall_s."""
        wall = (self.last_end - self.first_start) if self.first_start else 0.0
        return {"pid": os.getpid(), "units": self.units, "wall_s": wall, **{f"{k}_s": v for k, v in self.busy.items()}}

    def pid(self) -> int:
        return os.getpid()


# ----------------------------------------------------------------------------- the driver
@dataclass
class _ItemState:
    work: ItemWork
    radiometry: str | None = None
    left: int = 0
    failed: bool = False


@dataclass
class _Flight:
    kind: str  # prepare | unit | export
    state: _ItemState
    started: Any
    unit: Unit | None = None
    worker: int | None = None


@dataclass
class Pool:
    """The model workers of a run (for stats after it)."""

    actors: list = field(default_factory=list)
    gpus: int = 0
    threads: int | None = None


def plan_workers(workers: int | None, device: str, threads: int | None = None) -> tuple[int, int, int | None]:
    """(workers, GPUs per worker, CPU threads per worker) from the cluster's resources; `threads`
    caps the CPU threads of a CPU worker (default: the cluster's CPUs shared out)."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(int(resources.get("CPU", 1)), 1)
    if gpus and device != "cpu":
        count = workers or gpus
        if count > gpus:
            raise ValueError(f"--workers {count}: the cluster has {gpus} GPU(s); one model worker per GPU")
        return count, 1, None
    if device not in ("auto", "cpu"):
        raise ValueError(f"model.device {device!r}: the Ray cluster has no GPU")
    count = workers or 1
    if count > cpus:  # an actor asking for a CPU the cluster lacks waits for ever
        raise ValueError(f"--workers {count}: the Ray cluster has {cpus} CPU(s); at most one CPU model worker per CPU")
    return count, 0, min(cpus // count, threads or cpus)


def run_job(
    job: JobSpec, *, workers: int | None = None, address: str | None = None, options: Options = Options(),
    progress: bool = True, report: Callable[[str], None] | None = None,
    fuser_factory: Callable[[], Any] | None = None, pool: Pool | None = None, source: dict | None = None,
    threads: int | None = None,
) -> RunSummary:
    """Run what the schedule leaves to do on Ray model workers. `fuser_factory` (tests, benches):
    a picklable callable building the fuser on each worker instead of loading the job's model."""
    import ray

    with ray_session(address):
        remote = _remote_functions()
        count, gpus, threads = plan_workers(workers, job.model.device, threads)
        if fuser_factory is not None:
            sample = fuser_factory()
            model = ModelInfo.of(sample, job.model.weights)
            placement = Placement.of(sample)
        else:
            from tcmoa.inference import model_info

            model = model_info(job.model.weights)  # the weights' metadata only: the driver never loads the model
            placement = ray.get(remote["placement"].options(num_gpus=gpus).remote(job.model.device, job.model.precision, job.model.weights))
        session = Session(job, model, placement, options, runner="ray", workers=count, progress=progress, report=report,
                          source=source)
        with session.open():
            if not session.work.to_run:
                return session.summary
            actors = [
                remote["worker"].options(
                    num_gpus=gpus, num_cpus=0 if gpus else threads, max_concurrency=DEPTH, max_restarts=RETRIES,
                    # A call is retried until its actor is back or dead for good (restarts are bounded): a
                    # fixed count ran out while a lost node was still being detected on a loaded machine,
                    # failing units that a restarted worker would have done. Application errors are
                    # never retried (no retry_exceptions).
                    max_task_retries=-1, scheduling_strategy="SPREAD",
                ).remote(job.model, placement, threads, fuser_factory)
                for _ in range(count)
            ]
            if pool is not None:
                pool.actors, pool.gpus, pool.threads = actors, gpus, threads
            _drive(session, remote, actors)
    return session.summary


def _error_fields(exc: BaseException) -> dict:
    """A Ray error as a status record's error and traceback (the remote traceback included)."""
    cause = getattr(exc, "cause", None)
    if cause is not None and not isinstance(cause, BaseException):
        cause = None
    fields = failure_fields(cause or exc)
    fields["traceback"] = str(exc)
    return fields


def _drive(session: Session, remote: dict, actors: list) -> None:
    """The driver's loop: feed items to preparation, units to workers (at most DEPTH each) and
    finished items to export; record each outcome as it arrives."""
    import ray

    run, work_dir = session.plan.run_info, str(session.work_dir)
    waiting = collections.deque(_ItemState(w, w.radiometry, len(w.units)) for w in session.work.to_run)
    ready: collections.deque[tuple[_ItemState, Unit]] = collections.deque()
    flights: dict[Any, _Flight] = {}
    load = [0] * len(actors)
    item_tasks_max = max(2, len(actors))

    def item_tasks() -> int:
        return sum(1 for f in flights.values() if f.kind != "unit")

    def start_export(state: _ItemState) -> None:
        owned = session.claim_outputs(state.work.item)
        ref = remote["export"].remote(run, state.work.item, work_dir, state.radiometry, owned)
        flights[ref] = _Flight("export", state, now())

    def units_ready(state: _ItemState) -> None:
        if state.work.units:
            ready.extend((state, unit) for unit in state.work.units)
        elif state.work.export:
            start_export(state)

    while waiting or ready or flights:
        # items: prepare a few ahead of the workers, not the whole archive at once
        while waiting and item_tasks() < item_tasks_max and len(ready) < 2 * DEPTH * len(actors):
            state = waiting.popleft()
            if state.radiometry is not None:
                units_ready(state)
            else:
                ref = remote["prepare"].remote(run, state.work.item, work_dir)
                flights[ref] = _Flight("prepare", state, now())
        # units: to the least loaded worker, up to DEPTH each
        while ready and min(load) < DEPTH:
            state, unit = ready.popleft()
            if state.failed:  # an item with a failed unit is not exported: its other units wait for a retry
                state.left -= 1
                session.bar.update(1)
                continue
            worker = load.index(min(load))
            ref = actors[worker].run.remote(unit, state.work.item, state.radiometry,
                                            str(store_path(session.work_dir, state.work.item)))
            flights[ref] = _Flight("unit", state, now(), unit, worker)
            load[worker] += 1
        if not flights:
            continue
        finished, _ = ray.wait(list(flights), num_returns=1, timeout=1.0)
        for ref in finished:
            flight = flights.pop(ref)
            state, item = flight.state, flight.state.work.item
            try:
                value = ray.get(ref)
            except Exception as exc:  # an application error, or a worker lost beyond its retries
                value, error = None, _error_fields(exc)
            if flight.kind == "prepare":
                if value is None:
                    session.prepare_failed(item, error, flight.started, len(state.work.units))
                    continue
                state.radiometry = value
                session.prepared(item, value, flight.started)
                units_ready(state)
            elif flight.kind == "unit":
                load[flight.worker] -= 1
                state.left -= 1
                if value is None:
                    if not state.failed:
                        session.unit_failed(item, flight.unit, error, flight.started, 0)
                    else:
                        session.add(session.record("unit", flight.unit.unit_id, item, "failed", flight.started, **error))
                    session.bar.update(1)
                    state.failed = True
                    continue
                session.unit_done(item, flight.unit, value, flight.started)
                if state.left == 0 and state.work.export and not state.failed:
                    start_export(state)
            else:
                if value is None:
                    session.export_failed(item, error, flight.started)
                else:
                    session.exported(item, value, flight.started)


def worker_stats(pool: Pool) -> list[dict]:
    import ray

    return ray.get([actor.stats.remote() for actor in pool.actors])
