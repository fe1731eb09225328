"""STAC 1.1 metadata of a run, built with pystac: an Item per output, a Collection per job
collection and a Catalog per run directory.

- The Item written beside an item's outputs (`<name>.stac.json`) stands alone: asset hrefs relative
  to it, `derived_from` links to the source files, no parent. It is recorded (checksummed) with the
  other outputs and never rewritten afterwards.
- The run catalog (`RUN_DIR/catalog.json`, `RUN_DIR/stac/<collection>/collection.json` and a copy
  of every done Item under `RUN_DIR/stac/<collection>/`) is rebuilt from the done records at the
  end of every run. It is self-contained: every href is relative (sources outside the run keep
  their absolute paths), and objects have no self link, which STAC defines as absolute; so the
  catalog still loads when the run directory is moved or served as static files.

Extensions used: projection (CRS as `proj:code`, or `proj:wkt2` from pyproj when the CRS has no
authority code; shape, transform, bbox), file (checksum as a sha2-256 multihash, size), raster
(bits per sample, spatial resolution) on the STAC 1.1 `bands` (name, data type, nodata), and
processing (software, lineage, processing time).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
from typing import Any

import numpy as np

from pipeline import crs_forms, urls
from pipeline.acquisition import acquisition_range

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v2.0.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"

MEDIA_TYPES = {
    "cog": "image/tiff; application=geotiff; profile=cloud-optimized",
    "tiff": "image/tiff; application=geotiff",
    "png": "image/png",
    "ome-tiff": "image/tiff",  # OME-XML inside a plain TIFF: no registered media type of its own
}
CATALOG_FILE = "catalog.json"
STAC_DIR = "stac"


def _media_type(fmt: str, item) -> str | None:
    if fmt == "zarr":
        return f"application/vnd.zarr; version={getattr(item, 'zarr_format', 3)}"
    if fmt == "ome-zarr":
        return "application/vnd.zarr; version=3"  # OME-Zarr 0.5 is zarr format 3
    return MEDIA_TYPES.get(fmt)


def multihash_sha256(hex_digest: str) -> str:
    """The file extension's checksum form: multihash code 0x12 (sha2-256), length 0x20."""
    return "1220" + hex_digest


def _utc_text(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------- item parts
def _projection(grid) -> tuple[dict, dict | None, list[float] | None]:
    """(proj: properties, WGS84 footprint geometry, bbox) of a georeferenced grid."""
    from rasterio.transform import Affine, array_bounds
    from rasterio.warp import transform_geom

    left, bottom, right, top = array_bounds(grid.height, grid.width, Affine(*grid.transform))
    ring = [[left, bottom], [right, bottom], [right, top], [left, top], [left, bottom]]
    geometry = transform_geom(grid.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]},
                              antimeridian_cutting=True, precision=7)
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    points = [p for polygon in polygons for p in polygon[0]]
    bbox = [min(p[0] for p in points), min(p[1] for p in points), max(p[0] for p in points), max(p[1] for p in points)]
    code = crs_forms.authority_code(grid.crs)
    props: dict[str, Any] = {"proj:code": code}
    if not code:
        props["proj:wkt2"] = crs_forms.wkt2(grid.crs)  # WKT2:2019, not GDAL's WKT1
    props.update({"proj:shape": [grid.height, grid.width], "proj:transform": [float(v) for v in grid.transform],
                  "proj:bbox": [left, bottom, right, top]})
    return props, geometry, bbox


def _nodata(value: float | None) -> Any:
    if value is None:
        return None
    if np.isnan(value):
        return "nan"
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return int(value) if float(value).is_integer() else float(value)


def _bands(names, dtype: str, nodata: float | None, grid) -> list[dict]:
    bits = np.dtype(dtype).itemsize * 8
    bands = []
    for name in names:
        band: dict[str, Any] = {"name": name, "data_type": str(np.dtype(dtype)), "raster:bits_per_sample": bits}
        if nodata is not None:
            band["nodata"] = _nodata(nodata)
        if grid.georeferenced:
            band["raster:spatial_resolution"] = abs(float(grid.transform[0]))
        bands.append(band)
    return bands


def acquisition_properties(sources) -> tuple[dict, dt.datetime | None]:
    """datetime (acquisition) properties: one time, or null with the range the sources span. When
    no source records a time, the range of the files' modification times, and said so."""
    files = [(path, ref.kind) for ref in sources for path in ref.files]
    start, end = acquisition_range(files)
    origin = "source metadata"
    if start is None:
        mtimes = [dt.datetime.fromtimestamp(os.stat(p).st_mtime, dt.timezone.utc) for p, _ in files if os.path.exists(p)]
        mtimes += [t for p, _ in files if urls.is_url(p) and (t := urls.modified(p)) is not None]
        if not mtimes:
            mtimes = [dt.datetime.now(dt.timezone.utc)]
        start, end, origin = min(mtimes), max(mtimes), "file modification times (the sources record no acquisition time)"
    props = {"tcmoa:datetime_from": origin}
    if start == end:
        return {**props, "datetime": _utc_text(start)}, start
    return {**props, "datetime": None, "start_datetime": _utc_text(start), "end_datetime": _utc_text(end)}, None


def stac_item(item, assets: dict[str, dict], properties: dict, stac_path: pathlib.Path,
              created: dt.datetime | None = None) -> dict:
    """The standalone STAC Item of one fused item (an engine ItemPlan) as a dict.

    assets: key -> {"path", "format" (cog/tiff/png/zarr), "sha256", "roles"}; the "prompts" asset
    holds one float32 band per source (its share of every pixel)."""
    import pystac

    from tcmoa import __version__

    created = created or dt.datetime.now(dt.timezone.utc)
    grid = item.grid
    extensions = [FILE, RASTER, PROCESSING]
    props: dict[str, Any] = {}
    geometry = bbox = None
    if grid.georeferenced:
        proj, geometry, bbox = _projection(grid)
        props.update(proj)
        extensions.insert(0, PROJECTION)
    time_props, single = acquisition_properties(item.sources)
    props.update(time_props)
    props.update({
        "created": _utc_text(created),
        "processing:datetime": _utc_text(created),
        "processing:software": {"tcmoa": __version__},
        "processing:lineage": f"TC-MoA fusion ({json.dumps(item.task)}) of {len(item.sources)} sources, "
                              "pairwise in source order, on the grid of the reference source",
        "tcmoa:collection": item.collection,
        **properties,
    })
    stac = pystac.Item(id=item.item_id, geometry=geometry, bbox=bbox, datetime=single, properties=props,
                       stac_extensions=extensions)
    for key, asset in assets.items():
        path = pathlib.Path(asset["path"])
        prompts = key == "prompts"
        fields: dict[str, Any] = {"file:checksum": multihash_sha256(asset["sha256"])}
        if path.is_file():
            fields["file:size"] = path.stat().st_size
        fields["bands"] = (_bands([f"share:{r}" for r in item.roles], "float32", float("nan"), grid) if prompts
                           else _bands(item.band_names, item.output_dtype, item.output_nodata, grid))
        stac.add_asset(key, pystac.Asset(
            href=os.path.relpath(path, stac_path.parent), media_type=_media_type(asset["format"], item),
            roles=asset.get("roles", ["data"]), extra_fields=fields,
            title="share of each source per pixel (TC-MoA prompts)" if prompts else "fused image",
        ))
    for ref in item.sources:
        for path in ref.files:
            stac.add_link(pystac.Link("derived_from", path if urls.is_url(path) or "://" in path else str(pathlib.Path(path).absolute()),
                                      title=f"source {ref.role}"))
    document = stac.to_dict(include_self_link=False, transform_hrefs=False)
    if single is None:  # pystac drops a null datetime; the core schema needs the key present
        document["properties"] = {"datetime": None, **document["properties"]}
    return document


# ----------------------------------------------------------------------------- the run catalog
def _done_items(run_path: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """(collection, standalone item file) of every item whose outputs are recorded done."""
    from pipeline.status import done_outputs

    return sorted((key.split("/", 1)[0], pathlib.Path(assets["stac"]["path"]))
                  for key, assets in done_outputs(run_path).items()
                  if "stac" in assets and pathlib.Path(assets["stac"]["path"]).exists())


def _extent(items) -> "Any":
    import pystac

    boxes = [i.bbox for i in items if i.bbox]
    spatial = [[min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]] \
        if boxes else [[-180.0, -90.0, 180.0, 90.0]]
    times = [t for i in items for t in (i.datetime, i.common_metadata.start_datetime, i.common_metadata.end_datetime) if t]
    temporal = [[min(times), max(times)]] if times else [[None, None]]
    return pystac.Extent(pystac.SpatialExtent(spatial), pystac.TemporalExtent(temporal))


def _atomic_stac_io():
    """pystac's default I/O, writing each document under a temporary name renamed into place."""
    import pystac

    from pipeline.fsio import atomic_path

    class AtomicStacIO(pystac.stac_io.DefaultStacIO):
        def write_text_to_href(self, href: str, txt: str) -> None:
            with atomic_path(pathlib.Path(href)) as tmp:
                tmp.write_text(txt)

    return AtomicStacIO()


def write_run_catalog(run_path, job_name: str, collections: dict[str, str] | None = None):
    """(Re)write the run's Catalog, one Collection per job collection with a done item, and the
    Items; returns the catalog path (None when no item is done yet). collections: name ->
    description. Documents of items no longer done are removed from the catalog's folder."""
    from pipeline import runstore

    if runstore.is_remote(run_path):
        return _write_remote_catalog(runstore.location(run_path), job_name, collections)
    run_path = pathlib.Path(run_path).absolute()
    return _write_catalog(run_path, _done_items(run_path), job_name, collections, run_path.name)


def _write_remote_catalog(run_path, job_name: str, collections: dict[str, str] | None):
    """The same catalog for a run directory in an object store: built in a local mirror of the
    done Items (at their paths relative to the run directory, so every relative href comes out
    the same), then uploaded document by document (each one PUT); stale documents are deleted."""
    from pipeline import runstore, urls
    from pipeline.status import done_outputs

    import tempfile

    with tempfile.TemporaryDirectory(prefix="tcmoa-stac-") as tmp:
        mirror = pathlib.Path(tmp) / "run"
        done = []
        for key, assets in done_outputs(run_path).items():
            recorded = runstore.relative(assets["stac"]["path"], run_path) if "stac" in assets else None
            if recorded is None or urls.is_url(recorded) or os.path.isabs(recorded):
                continue  # outputs outside the run directory are not part of its catalog
            source = runstore.resolve(recorded, run_path)
            try:
                data = source.fs.cat_file(source.key)
            except FileNotFoundError:
                continue
            local = mirror / recorded
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            done.append((key.split("/", 1)[0], local))
        catalog = _write_catalog(mirror, sorted(done), job_name, collections, run_path.name)
        if catalog is None:
            return None
        written = {catalog, *(mirror / STAC_DIR).rglob("*.json")}
        for path in sorted(written, key=lambda p: p == catalog):  # the catalog last: it links the others
            runstore.upload(path, run_path / path.relative_to(mirror).as_posix())
        uploaded = {path.relative_to(mirror).as_posix() for path in written}
        stac_root = run_path / STAC_DIR
        fs = stac_root.fs
        fs.invalidate_cache()
        for key in fs.find(stac_root.key):
            relative = key[len(run_path.key) + 1:]
            if relative.endswith(".json") and relative not in uploaded:
                fs.rm_file(key)
        fs.invalidate_cache()
    return run_path / CATALOG_FILE


def _write_catalog(run_path: pathlib.Path, done: list, job_name: str, collections: dict[str, str] | None,
                   run_name: str) -> pathlib.Path | None:
    import pystac

    if not done:
        return None
    catalog = pystac.Catalog(id=f"{job_name}-run", title=f"tcmoa run of job {job_name}",
                             description=f"Outputs of the tcmoa job {job_name!r} in run directory {run_name}",
                             catalog_type=pystac.CatalogType.SELF_CONTAINED)
    catalog.set_self_href(str(run_path / CATALOG_FILE))
    by_collection: dict[str, list] = {}
    for collection_name, item_file in done:
        by_collection.setdefault(collection_name, []).append(pystac.Item.from_file(str(item_file)))
    written = {run_path / CATALOG_FILE}
    for collection_name, items in by_collection.items():
        folder = run_path / STAC_DIR / collection_name
        description = (collections or {}).get(collection_name) or f"Fused outputs of collection {collection_name!r}"
        collection = pystac.Collection(id=collection_name, description=description, extent=_extent(items),
                                       license="other")
        catalog.add_child(collection)  # (adding places objects by pystac's layout: placed here after)
        collection.set_self_href(str(folder / "collection.json"))
        written.add(folder / "collection.json")
        for item in items:
            collection.add_item(item)
            item.set_self_href(str(folder / f"{item.id}.json"))  # relative asset hrefs follow the move
            written.add(folder / f"{item.id}.json")
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, stac_io=_atomic_stac_io())
    for stale in (run_path / STAC_DIR).rglob("*.json"):
        if stale not in written:
            stale.unlink()
    return run_path / CATALOG_FILE
