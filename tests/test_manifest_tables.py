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
from pipeline_support import SourceAFuser, pair_job, random_raster, write_geotiff

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
