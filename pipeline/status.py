"""What a run directory says about its items: blocks done, status, failures (for `tcmoa status`).

A done item whose outputs are missing or of another size than recorded shows as 'damaged' (the
cheap check; `tcmoa verify` also compares checksums)."""
from __future__ import annotations

import json
import pathlib

from pipeline.manifest import RunDir
from pipeline.verify import item_output_problems


def run_status(path: str | pathlib.Path) -> dict:
    run_dir = RunDir(path)
    job = run_dir.job_record()
    items_table = run_dir.read_table("items.parquet")
    if job is None or items_table is None:
        raise FileNotFoundError(f"{path}: not a tcmoa run directory (no job.json / items.parquet)")
    plan_table = run_dir.read_table("plan.parquet")
    latest = run_dir.latest()
    units_of: dict[str, list[str]] = {}
    for row in plan_table.to_pylist() if plan_table is not None else []:
        units_of.setdefault(row["item"], []).append(row["unit_id"])

    items, failures = [], []
    for row in items_table.to_pylist():
        key = f"{row['collection']}/{row['item_id']}"
        unit_ids = units_of.get(key, [])
        unit_records = [latest.get(("unit", u)) for u in unit_ids]
        done = sum(1 for r in unit_records if r and r["status"] == "done")
        records = [latest.get(("prepare", row["prepare_id"])), *unit_records, latest.get(("item", row["finalize_id"]))]
        failed = [r for r in records if r and r["status"] == "failed"]
        finished = records[-1] is not None and records[-1]["status"] == "done"
        if row["status"] == "failed":
            state, error = "failed", row["error"]
            failures.append({"item": key, "kind": "plan", "error": row["error"], "traceback": None})
        elif finished:
            problems = item_output_problems(records[-1], run_dir.path, checksum=False)
            state, error = ("damaged", "; ".join(map(str, problems))) if problems else ("done", None)
            failures += [{"item": key, "kind": "output", "error": str(problem), "traceback": None} for problem in problems]
        elif failed:
            state, error = "failed", failed[0]["error"]
            failures += [{"item": key, "kind": r["kind"], "error": r["error"], "traceback": r["traceback"]} for r in failed]
        else:
            state, error = "pending", None
        items.append({"item": key, "status": state, "units": len(unit_ids), "units_done": done, "error": error,
                      "output": str(run_dir.resolve(row["output"])) if row["output"] else None})
    counts: dict[str, int] = {}
    for item in items:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    return {"job": job.get("name"), "fingerprint": job["fingerprint"], "items": items, "counts": counts, "failures": failures}


def done_outputs(path: str | pathlib.Path) -> dict[str, dict]:
    """'collection/item' -> its recorded assets (format -> {path, format, sha256, ...}) for every item
    whose outputs are recorded done, in the order they finished. Paths are given resolved against
    the run directory (absolute, or URLs), whichever way the manifest recorded them."""
    run_dir = RunDir(path)
    outputs: dict[str, dict] = {}
    for (kind, _), record in run_dir.latest().items():
        if kind == "item" and record["status"] == "done":
            assets = json.loads(record["info"])["assets"]
            outputs[f"{record['collection']}/{record['item_id']}"] = {
                fmt: {**a, "path": str(run_dir.resolve(a["path"]))} for fmt, a in assets.items()}
    return outputs
