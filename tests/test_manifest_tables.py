"""Manifest tables: fixed typed schemas (no null-typed column), documented, and the tables of several
runs combined with pyarrow datasets and queried with duckdb."""
from __future__ import annotations

import pathlib
import re

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.runners.local import run_job
from pipeline.manifest import STATUS_SCHEMA
from pipeline.spec import parse_job
from pipeline.tables import ITEMS_SCHEMA, PLAN_SCHEMA
from pipeline_support import SourceAFuser, pair_job, random_raster, write_geotiff, write_pair_archive

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(root: pathlib.Path, *, georeferenced: bool, broken: bool) -> pathlib.Path:
    """A two-scene run; `broken` truncates one source (a failed item), photos-like without a CRS."""
    rng = np.random.default_rng(len(str(root)))
    for scene in ("s1", "s2"):
        crs = "EPSG:32632" if georeferenced else None
        write_geotiff(root / f"{scene}_a.tif", random_raster(rng, (3, 70, 80), "uint8"), crs=crs)
        write_geotiff(root / f"{scene}_b.tif", random_raster(rng, (70, 80), "uint8"), crs=crs)
    if broken:
        (root / "s2_b.tif").write_bytes(b"not a tiff")
    run_job(parse_job(pair_job(root, block=64, chunk=64), base=root), fuser=SourceAFuser(), progress=False)
    return root / "run"


def test_every_field_is_typed_and_documented(tmp_path):
    run = _run(tmp_path, georeferenced=False, broken=False)  # no error, no CRS anywhere: all-null columns
    docs = (ROOT / "docs" / "manifest.md").read_text()
    for name, schema in (("items.parquet", ITEMS_SCHEMA), ("plan.parquet", PLAN_SCHEMA)):
        written = pq.read_schema(run / name)
        assert written.equals(schema, check_metadata=False), name
        assert all(f.metadata and f.metadata[b"description"] for f in schema)
    for part in (run / "status").glob("part-*.parquet"):
        assert pq.read_schema(part).equals(STATUS_SCHEMA, check_metadata=False)
    for schema in (ITEMS_SCHEMA, PLAN_SCHEMA, STATUS_SCHEMA):
        for field in schema:
            assert not pa.types.is_null(field.type)
            assert re.search(rf"^\| `{field.name}` \| ", docs, re.M), f"docs/manifest.md misses {field.name}"
    for field in ITEMS_SCHEMA:  # the documented description is the schema's
        assert field.metadata[b"description"].decode().replace("`", "") in docs.replace("`", ""), field.name


def test_tables_of_several_runs_combine_and_query_in_duckdb(tmp_path):
    runs = [_run(tmp_path / "geo", georeferenced=True, broken=True), _run(tmp_path / "photo", georeferenced=False, broken=False)]
    # item keys repeat from run to run (same job, same scenes): the run is the folder the table is in
    by_run = {"partitioning": pads.partitioning(pa.schema([("run", pa.string())])), "partition_base_dir": str(tmp_path)}
    items = pads.dataset([str(r / "items.parquet") for r in runs], **by_run)
    plan = pads.dataset([str(r / "plan.parquet") for r in runs], **by_run)
    status = pads.dataset([str(p) for r in runs for p in sorted((r / "status").glob("part-*.parquet"))], **by_run)
    assert items.schema.equals(ITEMS_SCHEMA.append(pa.field("run", pa.string())), check_metadata=False)
    con = duckdb.connect()
    for name, dataset in (("items", items), ("plan", plan), ("status", status)):
        con.register(name, dataset)
    rows = con.sql("""
        select i.run, i.item, i.status, i.crs is not null as georeferenced, count(p.unit_id) as blocks,
               coalesce(sum(p.pixels), 0) as pixels
        from items i left join plan p using (run, item) group by all order by i.run, i.item""").fetchall()
    assert rows == [("geo", "test/s1", "planned", True, 4, 70 * 80), ("geo", "test/s2", "failed", False, 0, 0),
                    ("photo", "test/s1", "planned", False, 4, 70 * 80), ("photo", "test/s2", "planned", False, 4, 70 * 80)]
    done = con.sql("""
        select s.run, s.item, count(*) as units
        from status s join plan p on s.run = p.run and s.id = p.unit_id and s.item = p.item
        where s.kind = 'unit' and s.status = 'done' group by all order by all""").fetchall()
    assert done == [("geo", "test/s1", 4), ("photo", "test/s1", 4), ("photo", "test/s2", 4)]
    errors = con.sql("select error from items where status = 'failed'").fetchall()
    assert len(errors) == 1 and "s2_b.tif" in errors[0][0]


def test_recorded_paths_are_relative_so_a_run_directory_moves(tmp_path):
    """Output paths in every table are relative to the run directory (issue 14, item 4): a run
    directory copied elsewhere, with its outputs inside, verifies and resumes there; a run
    directory written before (absolute paths) still resumes."""
    import json
    import shutil

    from pipeline.manifest import RunDir
    from pipeline.status import run_status
    from pipeline.verify import verify_run

    root = tmp_path / "a"
    write_pair_archive(root, ("s1",), (40, 50))
    doc = pair_job(root, block=64, chunk=64)
    doc["output"].pop("dir")  # the default: RUN_DIR/outputs
    run_job(parse_job(doc, base=root), fuser=SourceAFuser(), progress=False)
    run = RunDir(root / "run")
    assert run.read_table("items.parquet").column("output").to_pylist() == ["outputs/s1"]
    recorded = [json.loads(r["info"]) for (kind, _), r in run.latest().items() if kind in ("item", "claim")]
    paths = {p for info in recorded for p in (info.get("paths") or [a["path"] for a in info["assets"].values()])}
    assert paths and all(p.startswith("outputs/s1.") for p in paths), paths

    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(root / "run", moved)
    shutil.rmtree(root / "run")
    report = verify_run(moved)
    assert report["checked_outputs"] == 3 and not report["problems"]
    assert run_status(moved)["items"][0]["output"] == str(moved / "outputs" / "s1")
    (moved / "outputs" / "s1.tif").unlink()
    assert [p.path for p in verify_run(moved)["problems"]] == [str(moved / "outputs" / "s1.tif")]
    doc["run_dir"] = str(moved)
    again = run_job(parse_job(doc, base=root), fuser=SourceAFuser(), progress=False)
    assert again.items_done == 1 and (moved / "outputs" / "s1.tif").exists()

    # outputs outside the run directory are recorded absolute, as every path was in run directories
    # written before: read as such, verified and skipped
    old = tmp_path / "old"
    write_pair_archive(old, ("s1",), (40, 50))
    old_doc = pair_job(old, block=64, chunk=64)
    run_job(parse_job(old_doc, base=old), fuser=SourceAFuser(), progress=False)
    records = RunDir(old / "run").latest()
    assert all(pathlib.Path(a["path"]).is_absolute() for (kind, _), r in records.items() if kind == "item"
               for a in json.loads(r["info"])["assets"].values())
    skipped = run_job(parse_job(old_doc, base=old), fuser=SourceAFuser(), progress=False)
    assert skipped.items_skipped == 1 and skipped.units_run == 0


def test_a_run_directory_written_before_relative_paths_still_resumes(tmp_path):
    """An older run directory: its job.json holds the fingerprint of the job with absolute output
    folders and its records hold absolute paths. It is still this job's; its items verify and skip."""
    import json

    from pipeline.manifest import RunDir
    from pipeline_support import plan_with

    write_pair_archive(tmp_path, ("s1",), (40, 50))
    doc = pair_job(tmp_path, block=64, chunk=64)
    doc["output"].pop("dir")
    job = parse_job(doc, base=tmp_path)
    run_job(job, fuser=SourceAFuser(), progress=False)
    run = tmp_path / "run"
    # rewrite it the way the engine wrote it before: legacy fingerprint, absolute paths
    record = json.loads((run / "job.json").read_text())
    plan = plan_with(job, SourceAFuser())
    assert plan.legacy_fingerprint != plan.fingerprint == record["fingerprint"]
    (run / "job.json").write_text(json.dumps({**record, "fingerprint": plan.legacy_fingerprint}))
    absolute = lambda p: str(run / p)  # noqa: E731
    for part in (run / "status").glob("part-*.parquet"):
        rows = pq.read_table(part).to_pylist()
        for row in rows:
            info = json.loads(row["info"]) if row["info"] else None
            if info and "assets" in info:
                info["assets"] = {k: {**a, "path": absolute(a["path"])} for k, a in info["assets"].items()}
            if info and "paths" in info:
                info["paths"] = [absolute(p) for p in info["paths"]]
            row["info"] = json.dumps(info) if info else row["info"]
        pq.write_table(pa.Table.from_pylist(rows, schema=STATUS_SCHEMA), part)
    latest = RunDir(run).latest()
    assert all(pathlib.Path(a["path"]).is_absolute() for (kind, _), r in latest.items() if kind == "item"
               for a in json.loads(r["info"])["assets"].values())
    again = run_job(job, fuser=SourceAFuser(), progress=False)
    assert again.items_skipped == 1 and again.units_run == 0 and not again.redone
    assert json.loads((run / "job.json").read_text())["fingerprint"] == plan.legacy_fingerprint  # left as it was
