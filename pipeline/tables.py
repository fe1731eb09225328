"""Fixed Arrow schemas of the run directory's plan tables, with a description on every field.

Written with these schemas, a column never takes the null type (a column whose values are all
missing in one run would otherwise be typed null there and string in the next), so the tables of
many runs combine as one pyarrow dataset and query in duckdb. `docs/manifest.md` documents them;
the status records' schema is `pipeline.manifest.STATUS_SCHEMA`.
"""
from __future__ import annotations

import pyarrow as pa


def _field(name: str, kind: pa.DataType, description: str) -> pa.Field:
    return pa.field(name, kind, metadata={"description": description})


ITEMS_SCHEMA = pa.schema([
    _field("item", pa.string(), "item key 'collection/item_id': the key of plan.parquet's `item` too"),
    _field("collection", pa.string(), "job collection the item belongs to"),
    _field("item_id", pa.string(), "item id within its collection (from discovery)"),
    _field("status", pa.string(), "'planned', or 'failed' when the item could not be planned (see error)"),
    _field("error", pa.string(), "why planning failed (file and cause); null when planned"),
    _field("width", pa.int64(), "output width in pixels (the reference source's grid)"),
    _field("height", pa.int64(), "output height in pixels"),
    _field("crs", pa.string(), "output CRS as WKT; null for images without georeferencing"),
    _field("sources", pa.string(), "JSON list of the sources in reduction order: role, kind, bands, plane, "
                                   "normalisation, and each file's path, size and mtime"),
    _field("units", pa.int64(), "number of work units (output blocks) of the item"),
    _field("prepare_id", pa.string(), "id of the item's 'prepare' status record (hash of sources and settings)"),
    _field("finalize_id", pa.string(), "id of the item's 'item' status record (its exports)"),
    _field("output", pa.string(), "output path without suffix (formats add .tif, .tiff, .png, .zarr, .ome.tif, "
           ".ome.zarr), relative to the run directory when inside it (absolute path or URL otherwise; absolute in "
           "run directories written before)"),
    _field("sources_id", pa.string(), "hash of the source files' identities (path, size, mtime) and reading options: "
           "a later run of the same job reuses the recorded headers of an item whose files are unchanged"),
    _field("infos", pa.string(), "JSON of the sources' recorded headers (grid, bands, dtype, nodata, a stack's physical pixel size) in reduction order"),
])

PLAN_SCHEMA = pa.schema([
    _field("unit_id", pa.string(), "deterministic id of the work unit: hash of inputs, window, model, parameters"),
    _field("item", pa.string(), "item key 'collection/item_id'"),
    _field("block_row", pa.int64(), "row of the unit's block in the item's block grid"),
    _field("block_col", pa.int64(), "column of the unit's block in the item's block grid"),
    _field("y0", pa.int64(), "first output row of the block"),
    _field("y1", pa.int64(), "output row after the block's last"),
    _field("x0", pa.int64(), "first output column of the block"),
    _field("x1", pa.int64(), "output column after the block's last"),
    _field("tiles", pa.int64(), "model tiles computed for the block (halo included)"),
    _field("pixels", pa.int64(), "output pixels of the block"),
])
