"""The run directory: job fingerprint, lock, plan and status tables (Parquet).

Layout of a run directory:
  job.json            the job fingerprint and the canonical job it was computed from
  .lock               held while a run is active: one run per directory at a time (flock on
                      disk; a lease object in an object store, `pipeline.runstore`)
  items.parquet       the plan, one row per item (sources, grid, planning errors)
  plan.parquet        the plan, one row per work unit (deterministic id, block window, tiles)
  status/part-*.parquet  status records appended during runs (never rewritten in place)
  work/               item stores being assembled (not outputs)

Status records have a kind: 'prepare' (an item's radiometry and store), 'unit' (one block) or
'item' (exports of a finished item); the latest record per (kind, id) wins. A 'done' record is
written only after what it describes was verified (read back, checksummed).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import pathlib
import uuid
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import EXIT_BAD_JOB, EXIT_CANNOT_PROCEED
from pipeline import runstore
from pipeline.writers import json_safe

STATUS_SCHEMA = pa.schema([
    ("kind", pa.string()),
    ("id", pa.string()),
    ("item_id", pa.string()),
    ("collection", pa.string()),
    ("status", pa.string()),  # done | failed
    ("checksum", pa.string()),
    ("error", pa.string()),
    ("traceback", pa.string()),
    ("started", pa.timestamp("ms", tz="UTC")),
    ("finished", pa.timestamp("ms", tz="UTC")),
    ("seconds", pa.float64()),
    ("timings", pa.string()),  # JSON
    ("info", pa.string()),  # JSON: radiometry, outputs...
    ("run_id", pa.string()),
    ("item", pa.string()),  # 'collection/item_id', the key of items.parquet and plan.parquet (null in older parts)
])


class RunDirError(RuntimeError):
    """The run directory cannot be used for this job (another job's, already holds a run, ...)."""

    exit_code = EXIT_BAD_JOB


class RunDirUnusable(RunDirError):
    """The run directory cannot be used at all: locked by another run, not a folder, not writable, damaged."""

    exit_code = EXIT_CANNOT_PROCEED


def canonical_json(value: Any) -> str:
    return json.dumps(json_safe(value), sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)


def digest(value: Any, length: int = 24) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


class RunDir:
    """A run directory on disk or under an object-store prefix (`pipeline.runstore` does the
    storage: flock or lease, rename or single PUT)."""

    def __init__(self, path: "str | pathlib.Path | runstore.ObjectPath"):
        self.path = runstore.location(path)
        self.remote = runstore.is_remote(self.path)
        self.status_dir = self.path / "status"
        self.work_dir = self.path / "work"
        self.storage = runstore.backend(self.path)
        self.run_id = f"{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"

    def store_path(self, collection: str, item_id: str):
        """Where an item's blocks are assembled before its export."""
        return self.work_dir / collection / f"{item_id}.zarr"

    def resolve(self, recorded: str):
        """A path the manifest recorded (relative to the run directory, or absolute in older runs)."""
        return runstore.resolve(recorded, self.path)

    def relative(self, path) -> str:
        """A path as the manifest records it: relative to the run directory when inside it."""
        return runstore.relative(path, self.path)

    # ------------------------------------------------------------------ ownership
    def lock(self) -> None:
        """Hold the run directory for this run (released by unlock, or at exit / lease expiry)."""
        try:
            self.storage.lock(f"{now():%Y-%m-%d %H:%M:%S}")
        except runstore.RunDirUnavailable as exc:
            raise RunDirUnusable(str(exc)) from None

    def unlock(self) -> None:
        self.storage.unlock()

    def check_held(self) -> None:
        """Raise RunDirUnusable if this run no longer holds the run directory (a lost lease)."""
        try:
            self.storage.check_held()
        except runstore.RunDirUnavailable as exc:
            raise RunDirUnusable(str(exc)) from None

    def __enter__(self) -> "RunDir":
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    def job_record(self) -> dict | None:
        where = f"{self.path}/job.json"
        try:
            data = self.storage.read_bytes("job.json")
        except OSError as exc:
            raise RunDirUnusable(f"{where}: cannot read the job record ({exc})") from None
        if data is None:
            return None
        try:
            record = json.loads(data.decode("utf-8"))
        except ValueError as exc:  # not UTF-8, not JSON
            raise RunDirUnusable(f"{where}: damaged job record ({exc}); restore it or use a new run_dir") from None
        if not isinstance(record, dict) or "fingerprint" not in record:
            raise RunDirUnusable(f"{where}: damaged job record (no fingerprint); restore it or use a new run_dir")
        return record

    def claim(self, fingerprint: str, canonical_job: dict, job_name: str, also: tuple[str, ...] = ()) -> None:
        """Bind the run directory to one job fingerprint (a write that succeeds only where no job
        record is: If-None-Match in an object store); refuse another job with the differences.
        `also`: other fingerprints of the same job (the form older run directories recorded)."""
        record = self.job_record()
        if record is None:
            document = json.dumps({"fingerprint": fingerprint, "name": job_name, "created": now().isoformat(),
                                   "job": canonical_job}, indent=2, sort_keys=True, default=str)
            if self.storage.create("job.json", document.encode()):
                return
            record = self.job_record()  # another run claimed it in between
        if record["fingerprint"] == fingerprint or record["fingerprint"] in also:
            return
        old, new = _flatten(record.get("job", {})), _flatten(canonical_job)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        shown = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
        raise RunDirError(
            f"{self.path}: run directory belongs to job {record.get('name')!r} (fingerprint {record['fingerprint'][:12]}, "
            f"created {record.get('created', '?')[:19]}); this job's fingerprint is {fingerprint[:12]} "
            f"(differs in: {shown or 'unknown'}). Use another run_dir for a different job."
        )

    # ------------------------------------------------------------------ files and tables
    def write_text(self, name: str, text: str) -> None:
        """A small document of the run directory, replaced atomically."""
        self.storage.write_bytes(name, text.encode("utf-8"))

    def read_text(self, name: str) -> str | None:
        data = self.storage.read_bytes(name)
        return None if data is None else data.decode("utf-8")

    def write_table(self, name: str, rows: list[dict], schema: pa.Schema | None = None) -> None:
        table = pa.Table.from_pylist(rows, schema=schema) if rows or schema else pa.table({})
        self.storage.write_parquet(name, table)

    def read_table(self, name: str) -> pa.Table | None:
        data = self.storage.read_bytes(name)
        return None if data is None else _read_parquet(data, f"{self.path}/{name}")

    def append(self, records: Iterable[dict]) -> str | None:
        """Write the records as a new status part (durably: fsynced, or one PUT); returns its name."""
        rows = [{**{f.name: None for f in STATUS_SCHEMA}, "run_id": self.run_id, **r} for r in records]
        if not rows:
            return None
        self.check_held()
        name = f"status/part-{now():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}.parquet"
        if not self.remote:
            self.status_dir.mkdir(parents=True, exist_ok=True)
        self.storage.write_parquet(name, pa.Table.from_pylist(rows, schema=STATUS_SCHEMA))
        return name

    def _parts(self) -> list[str]:
        return self.storage.list("status", "part-")

    def _read_part(self, name: str) -> pa.Table:
        data = self.storage.read_bytes(name)
        if data is None:
            raise RunDirUnusable(f"{self.path}/{name}: status part vanished while read (another run on this run directory?)")
        return _read_parquet(data, f"{self.path}/{name}", STATUS_SCHEMA)

    def records(self) -> pa.Table:
        parts = [p for p in self._parts() if p.endswith(".parquet")]
        if not parts:
            return STATUS_SCHEMA.empty_table()
        return pa.concat_tables([self._read_part(p) for p in parts])

    def latest(self) -> dict[tuple[str, str], dict]:
        """The last record per (kind, id), in the order they were appended."""
        latest: dict[tuple[str, str], dict] = {}
        for row in self.records().to_pylist():
            latest[(row["kind"], row["id"])] = row
        return latest

    def compact(self, parts: list[str] | None = None) -> None:
        """Merge the status parts (all, or the consecutive `parts` given) into one; the records
        are kept, in order. (An object store cannot append: a part per record, merged in groups.)"""
        if parts is None:
            parts = [p for p in self._parts() if p.endswith(".parquet")]
        parts = sorted(str(p) if not isinstance(p, pathlib.Path) else f"status/{p.name}" for p in parts)
        if len(parts) < 2:
            return
        table = pa.concat_tables([self._read_part(p) for p in parts])
        # the newest name keeps the merged records last in order
        self.storage.write_parquet(parts[-1], table)
        for part in parts[:-1]:
            self.storage.delete(part)


def _read_parquet(data: bytes, where: str, schema: pa.Schema | None = None) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data), schema=schema)
    except (OSError, pa.ArrowException) as exc:
        raise RunDirUnusable(
            f"{where}: damaged run-directory table ({str(exc).splitlines()[0]}); move it aside to redo what it recorded"
        ) from None
