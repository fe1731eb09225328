"""The run directory: job fingerprint, lock, plan and status tables (Parquet), STAC items.

Layout of a run directory:
  job.json            the job fingerprint and the canonical job it was computed from
  .lock               held (flock) while a run is active: one run per directory at a time
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
import fcntl
import hashlib
import json
import os
import pathlib
import uuid
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import EXIT_BAD_JOB, EXIT_CANNOT_PROCEED
from pipeline.fsio import atomic_path
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
    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.status_dir = self.path / "status"
        self.work_dir = self.path / "work"
        self._lock_fh = None
        self.run_id = f"{now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"

    def store_path(self, collection: str, item_id: str) -> pathlib.Path:
        """Where an item's blocks are assembled before its export."""
        return self.work_dir / collection / f"{item_id}.zarr"

    # ------------------------------------------------------------------ ownership
    def lock(self) -> None:
        """Hold the run directory for this process (released by unlock or at exit)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirUnusable(f"{self.path}: run_dir is an existing file, not a folder: choose another run_dir")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fh = open(self.path / ".lock", "a+")
        except OSError as exc:
            raise RunDirUnusable(f"{self.path}: cannot use as run directory: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunDirUnusable(f"{self.path}: run directory is in use by another run ({holder})") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {now():%Y-%m-%d %H:%M:%S} UTC")
            fh.flush()
        except OSError as exc:
            fh.close()
            raise RunDirUnusable(f"{self.path / '.lock'}: cannot write the lock file: {exc.strerror or exc}") from None
        self._lock_fh = fh

    def unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> "RunDir":
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    def job_record(self) -> dict | None:
        path = self.path / "job.json"
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON
            raise RunDirUnusable(f"{path}: damaged job record ({exc}); restore it or use a new run_dir") from None
        if not isinstance(record, dict) or "fingerprint" not in record:
            raise RunDirUnusable(f"{path}: damaged job record (no fingerprint); restore it or use a new run_dir")
        return record

    def claim(self, fingerprint: str, canonical_job: dict, job_name: str) -> None:
        """Bind the run directory to one job fingerprint; refuse another job with the differences."""
        record = self.job_record()
        if record is None:
            with atomic_path(self.path / "job.json") as tmp:
                tmp.write_text(json.dumps({
                    "fingerprint": fingerprint, "name": job_name, "created": now().isoformat(), "job": canonical_job,
                }, indent=2, sort_keys=True, default=str))
            return
        if record["fingerprint"] == fingerprint:
            return
        old, new = _flatten(record.get("job", {})), _flatten(canonical_job)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        shown = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
        raise RunDirError(
            f"{self.path}: run directory belongs to job {record.get('name')!r} (fingerprint {record['fingerprint'][:12]}, "
            f"created {record.get('created', '?')[:19]}); this job's fingerprint is {fingerprint[:12]} "
            f"(differs in: {shown or 'unknown'}). Use another run_dir for a different job."
        )

    # ------------------------------------------------------------------ tables
    def write_table(self, name: str, rows: list[dict], schema: pa.Schema | None = None) -> None:
        table = pa.Table.from_pylist(rows, schema=schema) if rows or schema else pa.table({})
        with atomic_path(self.path / name) as tmp:
            pq.write_table(table, tmp)

    def read_table(self, name: str) -> pa.Table | None:
        path = self.path / name
        return _read_parquet(path) if path.exists() else None

    def append(self, records: Iterable[dict]) -> pathlib.Path | None:
        """Write the records as a new status part (durably); returns its path."""
        rows = [{**{f.name: None for f in STATUS_SCHEMA}, "run_id": self.run_id, **r} for r in records]
        if not rows:
            return None
        self.status_dir.mkdir(parents=True, exist_ok=True)
        path = self.status_dir / f"part-{now():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:6]}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(rows, schema=STATUS_SCHEMA), tmp)
        return path

    def records(self) -> pa.Table:
        parts = sorted(self.status_dir.glob("part-*.parquet")) if self.status_dir.exists() else []
        if not parts:
            return STATUS_SCHEMA.empty_table()
        return pa.concat_tables([_read_parquet(p, STATUS_SCHEMA) for p in parts])

    def latest(self) -> dict[tuple[str, str], dict]:
        """The last record per (kind, id), in the order they were appended."""
        latest: dict[tuple[str, str], dict] = {}
        for row in self.records().to_pylist():
            latest[(row["kind"], row["id"])] = row
        return latest

    def compact(self, parts: list[pathlib.Path] | None = None) -> None:
        """Merge the status parts (all, or the consecutive `parts` given) into one file; the records
        are kept, in order."""
        if parts is None:
            parts = list(self.status_dir.glob("part-*.parquet")) if self.status_dir.exists() else []
        parts = sorted(parts)
        if len(parts) < 2:
            return
        table = pa.concat_tables([_read_parquet(p, STATUS_SCHEMA) for p in parts])
        with atomic_path(parts[-1]) as tmp:  # the newest name keeps the merged records last in order
            pq.write_table(table, tmp)
        for part in parts[:-1]:
            part.unlink()


def _read_parquet(path: pathlib.Path, schema: pa.Schema | None = None) -> pa.Table:
    try:
        return pq.read_table(path, schema=schema)
    except (OSError, pa.ArrowException) as exc:
        raise RunDirUnusable(
            f"{path}: damaged run-directory table ({str(exc).splitlines()[0]}); move it aside to redo what it recorded"
        ) from None


# ----------------------------------------------------------------------------- STAC
MEDIA_TYPES = {
    "cog": "image/tiff; application=geotiff; profile=cloud-optimized",
    "tiff": "image/tiff; application=geotiff",
    "png": "image/png",
    "zarr": "application/vnd+zarr",
}


def multihash_sha256(hex_digest: str) -> str:
    return "1220" + hex_digest


def stac_item(
    item_id: str, collection: str, grid, assets: dict[str, dict], properties: dict, stac_path: pathlib.Path
) -> dict:
    """A STAC 1.1 Item for one fused output; asset hrefs are relative to the item file."""
    geometry, bbox = None, None
    props = {"datetime": now().isoformat().replace("+00:00", "Z"), **properties}
    extensions = ["https://stac-extensions.github.io/file/v2.1.0/schema.json"]
    if grid.georeferenced:
        from rasterio.crs import CRS
        from rasterio.transform import Affine, array_bounds
        from rasterio.warp import transform_geom

        left, bottom, right, top = array_bounds(grid.height, grid.width, Affine(*grid.transform))
        ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
        geometry = transform_geom(CRS.from_wkt(grid.crs), "EPSG:4326", {"type": "Polygon", "coordinates": [ring]},
                                  antimeridian_cutting=True, precision=7)
        coords = [c for poly in ([geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]) for c in poly[0]]
        bbox = [min(c[0] for c in coords), min(c[1] for c in coords), max(c[0] for c in coords), max(c[1] for c in coords)]
        epsg = CRS.from_wkt(grid.crs).to_epsg()
        props.update({
            "proj:code": f"EPSG:{epsg}" if epsg else None,
            "proj:shape": [grid.height, grid.width],
            "proj:transform": list(grid.transform),
            "proj:bbox": [left, bottom, right, top],
        })
        if not epsg:
            props["proj:wkt2"] = grid.crs
        extensions.append("https://stac-extensions.github.io/projection/v2.0.0/schema.json")
    stac_assets = {}
    for key, asset in assets.items():
        path = pathlib.Path(asset["path"])
        stac_assets[key] = {
            "href": os.path.relpath(path, stac_path.parent),
            "type": MEDIA_TYPES.get(asset["format"], "application/octet-stream"),
            "roles": asset.get("roles", ["data"]),
            "file:checksum": multihash_sha256(asset["sha256"]),
            **({"file:size": path.stat().st_size} if path.is_file() else {}),
            **({"title": asset["title"]} if "title" in asset else {}),
        }
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": extensions,
        "id": item_id,
        "collection": collection,
        "geometry": geometry,
        **({"bbox": bbox} if bbox else {}),
        "properties": props,
        "links": [],
        "assets": stac_assets,
    }
