"""Checking what a run directory recorded against the disk: outputs (size, sha256) and the blocks of
the work stores (checksums). Pure checks: they return problems (path and reason) and change nothing.

Used by the resume rules (a done item or block is skipped only when its check finds no problem), by
`tcmoa status` (the cheap size check) and by `tcmoa verify` (everything).
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

from pipeline import runstore
from pipeline.errors import one_line


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str
    item: str = ""  # collection/item

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def to_dict(self) -> dict:
        return {"item": self.item, "path": self.path, "reason": self.reason}


def asset_problem(asset: dict, run_dir, *, checksum: bool = True, item: str = "") -> Problem | None:
    """Compare one recorded output ({'path', 'sha256', 'size'?}; the path relative to the run
    directory, or absolute in older runs) with the disk or the object store (objects read back:
    an ETag is not a sha256)."""
    path = runstore.resolve(asset["path"], run_dir)
    try:
        size = runstore.output_size(path)  # FileNotFoundError: missing
        if asset.get("size") is not None and size != asset["size"]:
            return Problem(str(path), f"{size} bytes, {asset['size']} recorded", item)
        if checksum and runstore.sha256_output(path) != asset["sha256"]:
            return Problem(str(path), "content differs from the recorded sha256", item)
    except FileNotFoundError:
        return Problem(str(path), "missing (recorded done)", item)
    except OSError as exc:
        return Problem(str(path), f"unreadable ({exc.strerror or exc})", item)
    return None


def item_output_problems(record: dict, run_dir, *, checksum: bool = True) -> list[Problem]:
    """Problems with the outputs an item's done record lists (an empty list: all as recorded)."""
    item = f"{record['collection']}/{record['item_id']}"
    assets = json.loads(record["info"])["assets"]
    return [p for a in assets.values() if (p := asset_problem(a, run_dir, checksum=checksum, item=item))]


def block_problem(store, block, recorded_checksum: str, *, item: str = "") -> Problem | None:
    """Compare a block of an item's work store with the checksum its done record holds."""
    from pipeline.writers import read_block_checksum

    where = f"block {block.row},{block.col} (rows {block.y0}-{block.y1}, columns {block.x0}-{block.x1})"
    if not runstore.is_dir(store):
        return Problem(str(store), f"{where}: work store missing", item)
    try:
        actual = read_block_checksum(store, block)
    except Exception as exc:  # a truncated or damaged chunk: zarr / the codec raise many kinds
        return Problem(str(store), f"{where} unreadable ({one_line(exc)})", item)
    if actual != recorded_checksum:
        return Problem(str(store), f"{where} differs from its recorded checksum (a chunk lost or changed)", item)
    return None


def store_static_digest(store) -> str:
    """sha256 of what no block writes in a work store: group and array metadata, coordinates."""
    from pipeline.writers import FUSED, PROMPTS

    return runstore.sha256_output(store, exclude=(f"{FUSED}/c/", f"{PROMPTS}/c/"))


def store_problem(store, recorded_digest: str | None, *, item: str = "") -> Problem | None:
    """Compare a work store's metadata and coordinates with the digest its prepare record holds."""
    if not runstore.is_dir(store):
        return Problem(str(store), "work store missing", item)
    if recorded_digest is None:
        return Problem(str(store), "no checksum of the store's metadata recorded", item)
    try:
        if store_static_digest(store) != recorded_digest:
            return Problem(str(store), "metadata or coordinates differ from the recorded checksum", item)
    except OSError as exc:
        return Problem(str(store), f"unreadable ({exc.strerror or exc})", item)
    return None


def verify_run(path: str | pathlib.Path) -> dict:
    """Check every output and work-store block a run directory recorded as done.
    Returns {'checked_outputs', 'checked_blocks', 'problems': [Problem...]}."""
    from pipeline.manifest import RunDir
    from pipeline.tiling import Block

    run_dir = RunDir(path)
    if run_dir.job_record() is None or run_dir.read_table("items.parquet") is None:
        raise FileNotFoundError(f"{path}: not a tcmoa run directory (no job.json / items.parquet)")
    latest = run_dir.latest()
    items = {f"{r['collection']}/{r['item_id']}": r for r in run_dir.read_table("items.parquet").to_pylist()}
    finished = {r["finalize_id"] for r in items.values() if r["finalize_id"]}
    problems: list[Problem] = []
    outputs = blocks = 0
    for (kind, rid), record in latest.items():
        if kind == "item" and record["status"] == "done" and rid in finished:
            outputs += len(json.loads(record["info"])["assets"])
            problems += item_output_problems(record, run_dir.path)
    plan = run_dir.read_table("plan.parquet")
    stores_checked: set[str] = set()
    for row in plan.to_pylist() if plan is not None else []:
        item = items.get(row["item"])
        record = latest.get(("unit", row["unit_id"]))
        if not item or not record or record["status"] != "done":
            continue
        done = latest.get(("item", item["finalize_id"]))
        if done and done["status"] == "done":
            continue  # exported: the work store is gone, the outputs were checked above
        block = Block(row["block_row"], row["block_col"], row["y0"], row["y1"], row["x0"], row["x1"])
        store = run_dir.store_path(item["collection"], item["item_id"])
        if row["item"] not in stores_checked:
            stores_checked.add(row["item"])
            prepared = latest.get(("prepare", item["prepare_id"]))
            recorded = json.loads(prepared["info"]).get("store") if prepared and prepared["status"] == "done" else None
            if problem := store_problem(store, recorded, item=row["item"]):
                problems.append(problem)
        blocks += 1
        if problem := block_problem(store, block, record["checksum"], item=row["item"]):
            problems.append(problem)
    return {"checked_outputs": outputs, "checked_blocks": blocks, "problems": problems}
