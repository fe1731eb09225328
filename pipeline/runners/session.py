"""What every runner does around the work: hold the run directory, plan, schedule, and record.

A `Session` is opened on the driver: it locks the run directory (one run at a time), binds it to
the job's fingerprint, writes the plan tables, observes what is on disk and asks the pure
`schedule` for the work. The runner then does the work (in-process or on Ray) and reports each
outcome to the session, which is the only writer of status records and keeps the summary and
the progress bar.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Iterator

from pipeline import output_safety, runstore, verify
from pipeline.errors import stop_on_signals
from pipeline.items import check_item_outputs, interrupted_temporaries, output_paths, place_store, store_matches, store_path
from pipeline.manifest import RunDir, canonical_json, now
from pipeline.plan import ItemPlan, Plan, infos_from_json, infos_to_json, plan_job, source_identity
from pipeline.schedule import Observed, Options, Work, schedule
from pipeline.sources import SourceError
from pipeline.spec import JobSpec
from pipeline.stac import write_run_catalog
from pipeline.tables import ITEMS_SCHEMA, PLAN_SCHEMA
from tcmoa.interface import ModelInfo, Placement

JOB_SOURCE = "job-source.json"  # the job document and the folder its relative paths start from


@dataclass
class RunSummary:
    job: str
    run_dir: str
    fingerprint: str
    runner: str = "local"
    workers: int = 1
    items_done: int = 0
    items_failed: int = 0
    items_skipped: int = 0  # already done in an earlier run
    units_run: int = 0
    units_skipped: int = 0
    pixels: int = 0
    tiles: int = 0
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)
    redone: list[dict] = field(default_factory=list)  # recorded done, but not as recorded on disk: item, path, reason
    temporaries_removed: int = 0  # left by an interrupted run
    status_flush_s: float = 0.0  # time spent appending status records (fsync included)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def failure_fields(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, (SourceError, OSError)) else str(exc),
            "traceback": "".join(traceback.format_exception(exc))}


def write_plan_tables(run_dir: RunDir, plan: Plan) -> None:
    run_dir.write_table("items.parquet", [
        {"item": i.key, "collection": i.collection, "item_id": i.item_id, "status": "planned", "error": None,
         "width": i.grid.width, "height": i.grid.height, "crs": i.grid.crs, "sources": canonical_json([source_identity(s) for s in i.sources]),
         "units": len(plan.units[i.key]), "prepare_id": i.prepare_id, "finalize_id": i.finalize_id,
         "output": run_dir.relative(i.output_base),
         "sources_id": i.sources_id, "infos": infos_to_json(i.infos)}
        for i in plan.items
    ] + [
        {"item": f"{f['collection']}/{f['item_id']}", "collection": f["collection"], "item_id": f["item_id"], "status": "failed", "error": f["error"], "width": None,
         "height": None, "crs": None, "sources": None, "units": 0, "prepare_id": None, "finalize_id": None, "output": None,
         "sources_id": None, "infos": None}
        for f in plan.failures
    ], schema=ITEMS_SCHEMA)
    run_dir.write_table("plan.parquet", [
        {"unit_id": u.unit_id, "item": u.item_key, "block_row": u.block.row, "block_col": u.block.col,
         "y0": u.block.y0, "y1": u.block.y1, "x0": u.block.x0, "x1": u.block.x1, "tiles": u.tiles, "pixels": u.block.pixels}
        for u in plan.all_units
    ], schema=PLAN_SCHEMA)


def recorded_infos(run_dir: RunDir) -> Callable[[str], tuple | None]:
    """Source headers recorded by an earlier plan, by the identity of the files they came from."""
    table = run_dir.read_table("items.parquet")
    known = {}
    if table is not None and "sources_id" in table.column_names:
        known = {r["sources_id"]: r["infos"] for r in table.select(["sources_id", "infos"]).to_pylist() if r["sources_id"]}
    return lambda sources_id: infos_from_json(known[sources_id]) if sources_id in known else None


def observe(plan: Plan, latest: dict, run_dir: RunDir, owned: set[str]) -> tuple[Observed, list]:
    """What the schedule needs to know from disk, checked against the records (`pipeline.verify`):
    done items' outputs (size, sha256), work stores (prepare id, metadata digest), done blocks
    (checksums), and outputs that may not be written. Returns it with the problems found in what
    was recorded done (they are redone)."""
    verified, intact, blocks, refused, problems = set(), set(), set(), {}, []
    for item in plan.items:
        finished = latest.get(("item", item.finalize_id))
        if finished and finished["status"] == "done":
            store = store_path(run_dir.work_dir, item)
            if runstore.is_dir(store) and store_matches(store, item.prepare_id):  # recorded done, store not yet moved
                place_store(run_dir.work_dir, item)
            found = verify.item_output_problems(finished, run_dir.path)
            if not found:
                verified.add(item.finalize_id)
                continue
            problems += found
        try:
            check_item_outputs(plan.run_info, item, owned)
        except output_safety.OutputRefused as exc:
            refused[item.finalize_id] = str(exc)
            continue
        prepared = latest.get(("prepare", item.prepare_id))
        store = store_path(run_dir.work_dir, item)
        if not (prepared and prepared["status"] == "done" and store_matches(store, item.prepare_id)):
            continue
        if problem := verify.store_problem(store, json.loads(prepared["info"]).get("store"), item=item.key):
            problems.append(problem)
            continue
        intact.add(item.prepare_id)
        for unit in plan.units[item.key]:
            record = latest.get(("unit", unit.unit_id))
            if record and record["status"] == "done":
                if problem := verify.block_problem(store, unit.block, record["checksum"], item=item.key):
                    problems.append(problem)
                else:
                    blocks.add(unit.unit_id)
    return Observed(frozenset(verified), frozenset(intact), frozenset(blocks), refused), problems


class Session:
    """The driver's side of a run: plan, schedule, status records, summary and progress."""

    def __init__(self, job: JobSpec, model: ModelInfo, placement: Placement, options: Options, *,
                 runner: str, workers: int, progress: bool, report: Callable[[str], None] | None,
                 source: dict | None = None):
        self.job, self.options, self.source = job, options, source
        self.run_dir = RunDir(job.run_dir)
        self.plan = plan_job(job, model, placement, recorded_infos(self.run_dir))
        self.summary = RunSummary(job.name, str(self.run_dir.path), self.plan.fingerprint, runner, workers)
        self.report = report or (lambda message: None)
        self.progress = progress
        self.work: Work | None = None
        self.parts: list[str] = []  # status parts appended since the last merge
        self.merge_every = 64
        self.owned: set[str] = set()  # output paths this run directory created (they may be replaced)
        self.bar = None
        self.start = time.perf_counter()
        self.work_dir = self.run_dir.work_dir

    @contextlib.contextmanager
    def open(self) -> Iterator["Session"]:
        from tqdm.auto import tqdm

        with self.run_dir, stop_on_signals():
            self.run_dir.claim(self.plan.fingerprint, self.plan.canonical_job, self.job.name,
                               also=(self.plan.legacy_fingerprint,) if self.plan.legacy_fingerprint else ())
            if self.source is not None:  # what `tcmoa resume RUN_DIR` runs again
                self.run_dir.write_text(JOB_SOURCE, json.dumps(self.source, indent=2, default=str))
            latest = self.run_dir.latest()
            write_plan_tables(self.run_dir, self.plan)
            self.summary.temporaries_removed = len(interrupted_temporaries(self.plan.items, self.work_dir))
            self.owned = output_safety.owned_paths(latest, self.run_dir.path)
            observed, problems = observe(self.plan, latest, self.run_dir, self.owned)
            for problem in problems:
                self.summary.redone.append(problem.to_dict())
                self.report(f"REDO {problem.item}: {problem}")
            self.work = schedule(self.plan, latest, observed, self.options)
            for note in self.plan.notes:
                self.report(note)
            for failure in self.plan.failures:
                self.summary.failures.append({**failure, "stage": "plan"})
                self.report(f"FAILED {failure['collection']}/{failure['item_id']}: {failure['error']}")
            total = sum(len(self.plan.units[w.item.key]) for w in self.work.items if w.state != "excluded")
            with tqdm(total=total, unit="block", disable=not self.progress, desc=self.job.name, dynamic_ncols=True) as self.bar:
                for w in self.work.items:
                    if w.state == "done":
                        self.summary.items_skipped += 1
                        self.summary.units_skipped += w.units_done
                        self.bar.update(w.units_done)
                    elif w.state == "failed":
                        if w.stage == "outputs":  # refused: recorded as its export's failure
                            self.add(self.record("item", w.item.finalize_id, w.item, "failed", now(), error=w.error))
                        self.fail(w.item, w.stage, w.error, len(self.plan.units[w.item.key]))
                    elif w.state == "run":
                        self.summary.units_skipped += w.units_done
                        self.bar.update(w.units_done)
                yield self
            self.run_dir.compact()
            # The run's STAC catalog, for both runners, once the records are final.
            write_run_catalog(self.run_dir.path, self.job.name,
                              {c.name: f"{c.name}: {json.dumps(c.task)} fusion" for c in self.job.collections})

        self.summary.seconds = time.perf_counter() - self.start
        self.summary.items_failed = len({(f["collection"], f["item_id"]) for f in self.summary.failures})

    # ------------------------------------------------------------------ records
    def add(self, record: dict) -> None:
        """Append the record now (fsynced with its part file: a lost driver loses no finished
        block), merging every `merge_every` new parts into one."""
        start = time.perf_counter()
        self.parts.append(self.run_dir.append([record]))
        if len(self.parts) >= self.merge_every:
            self.run_dir.compact(self.parts)
            self.parts = []
        self.summary.status_flush_s += time.perf_counter() - start

    @staticmethod
    def record(kind: str, rid: str, item: ItemPlan, status: str, started, **extra) -> dict:
        finished = now()
        return {"kind": kind, "id": rid, "item": item.key, "item_id": item.item_id, "collection": item.collection, "status": status,
                "started": started, "finished": finished, "seconds": (finished - started).total_seconds(), **extra}

    def fail(self, item: ItemPlan, stage: str, error: str, units_left: int = 0) -> None:
        self.summary.failures.append({"collection": item.collection, "item_id": item.item_id, "stage": stage, "error": error})
        self.report(f"FAILED {item.key} ({stage}): {error}")
        if self.bar is not None:
            self.bar.update(units_left)

    # ------------------------------------------------------------------ outcomes (driver only)
    def prepared(self, item: ItemPlan, radiometry: str, started) -> None:
        self.add(self.record("prepare", item.prepare_id, item, "done", started, info=radiometry))

    def prepare_failed(self, item: ItemPlan, exc: BaseException | dict, started, units_left: int) -> None:
        fields = exc if isinstance(exc, dict) else failure_fields(exc)
        self.add(self.record("prepare", item.prepare_id, item, "failed", started, **fields))
        self.fail(item, "prepare", fields["error"], units_left)

    def unit_done(self, item: ItemPlan, unit, result: dict, started) -> None:
        self.add(self.record("unit", unit.unit_id, item, "done", started, checksum=result["checksum"],
                             timings=json.dumps(result["timings"])))
        self.summary.units_run += 1
        self.summary.pixels += unit.block.pixels
        self.summary.tiles += unit.tiles
        self.bar.update(1)

    def unit_failed(self, item: ItemPlan, unit, exc: BaseException | dict, started, units_left: int) -> None:
        fields = exc if isinstance(exc, dict) else failure_fields(exc)
        self.add(self.record("unit", unit.unit_id, item, "failed", started, **fields))
        self.fail(item, "unit", fields["error"], units_left)

    def claim_outputs(self, item: ItemPlan) -> set[str]:
        """Record the item's output paths before its export renames the first: after a kill
        mid-export they are still the run's own. Returns the paths the export may replace."""
        claimed = [runstore.normalise(p) for p in output_paths(item).values()]
        self.add(self.record(output_safety.CLAIM, item.finalize_id, item, "claimed", now(),
                             info=canonical_json({"paths": [self.run_dir.relative(p) for p in claimed]})))
        return self.owned | set(claimed)

    def exported(self, item: ItemPlan, assets: dict, started) -> None:
        """The item's files are written: record it done, then put its store in place (a driver
        lost in between leaves the store in work/: the next run finishes the move, `observe`)."""
        assets = {fmt: {**a, "path": self.run_dir.relative(a["path"])} for fmt, a in assets.items()}
        self.add(self.record("item", item.finalize_id, item, "done", started, checksum=assets["stac"]["sha256"],
                             info=canonical_json({"assets": assets})))
        try:
            place_store(self.work_dir, item)
        except OSError as exc:
            return self.export_failed(item, exc, started)
        self.summary.items_done += 1
        self.summary.outputs[item.key] = {fmt: str(self.run_dir.resolve(a["path"])) for fmt, a in assets.items()}

    def export_failed(self, item: ItemPlan, exc: BaseException | dict, started) -> None:
        fields = exc if isinstance(exc, dict) else failure_fields(exc)
        self.add(self.record("item", item.finalize_id, item, "failed", started, **fields))
        self.fail(item, "export", fields["error"])
