"""Planning: a job's items, inspected (headers only), cut into work units with deterministic ids.

Needs only the model's `ModelInfo` (name, tile multiple, weights hash) and the resolved
`Placement` (device type, precision), never a loaded model: a driver without a GPU plans a job,
and `--dry-run` prints it, without reading the weights.

A unit's id is a hash of its item's inputs (files with size and mtime, bands, normalisation), its
window, the model (weights hash, resolved device and precision, prompt controls) and parameters:
same id, same block. An item whose source files are unchanged since a recorded plan is not
re-inspected: its headers come from the run directory's items table (scheduled archives).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pipeline import output_safety, radiometry, urls
from pipeline.discover import DiscoveredItem, discover
from pipeline.errors import JobError
from pipeline.manifest import canonical_json, digest
from pipeline.ome import PixelSize
from pipeline.sources import Grid, SourceError, SourceInfo, SourceRef, check_overlap, expand_sources, inspect
from pipeline.spec import OME_FORMATS, CollectionSpec, JobSpec, ModelSpec
from pipeline.tiling import Block, TileGrid, block_grid, make_grid, tiles_for_block
from tcmoa.interface import ModelInfo, Placement


@dataclass(frozen=True)
class ItemPlan:
    """Everything a worker needs to process any unit of the item (plain data)."""

    item_id: str
    collection: str
    task: Any
    sources: tuple[SourceRef, ...]  # in reduction order
    infos: tuple[SourceInfo, ...]
    reference: int  # the source whose grid and radiometry the output uses
    grid: Grid
    tiles: TileGrid
    out_channels: int
    band_names: tuple[str, ...]
    output_dtype: str
    output_nodata: float | None
    output_base: str  # output path without suffix
    formats: tuple[str, ...]
    scale: str
    valid_rule: str
    prompt_maps: bool
    window: str
    batch_size: int
    chunk: int
    cog_blocksize: int
    compress: str
    prepare_id: str
    sources_id: str  # hash of the source files' identities (path, size, mtime) and reading options
    zarr_format: int = 3
    creation_options: tuple[tuple[str, str], ...] = ()  # the user's GDAL options for cog / tiff files

    @property
    def key(self) -> str:
        return f"{self.collection}/{self.item_id}"

    @property
    def finalize_id(self) -> str:
        return digest({"prepare": self.prepare_id, "finalize": True})

    @property
    def roles(self) -> list[str]:
        return [s.role for s in self.sources]


@dataclass(frozen=True)
class Unit:
    unit_id: str
    item_key: str
    block: Block
    ys: tuple[int, ...]  # origins of the tiles touching the block
    xs: tuple[int, ...]

    @property
    def tiles(self) -> int:
        return len(self.ys) * len(self.xs)


@dataclass(frozen=True)
class RunInfo:
    """What a worker preparing or exporting an item records as provenance (plain data)."""

    job_name: str
    fingerprint: str
    model_key: dict
    model_config: dict
    tiling: dict
    overwrite: bool = False  # outputs may replace what the run did not create (never inputs)


@dataclass
class Plan:
    job: JobSpec
    fingerprint: str
    canonical_job: dict
    model_key: dict
    model: ModelInfo
    items: list[ItemPlan]
    units: dict[str, list[Unit]]
    failures: list[dict]  # items that could not be planned: collection, item_id, error
    notes: list[str] = field(default_factory=list)  # e.g. a collection that found no item
    inspected: int = 0  # items whose sources were opened to read their headers (the others came from the record)
    # the fingerprint run directories written before output paths were relative recorded for this job
    legacy_fingerprint: str | None = None

    @property
    def all_units(self) -> list[Unit]:
        return [u for item in self.items for u in self.units[item.key]]

    @property
    def run_info(self) -> RunInfo:
        return RunInfo(self.job.name, self.fingerprint, self.model_key, self.model.config, dataclasses.asdict(self.job.tiling),
                       self.job.overwrite)


# ----------------------------------------------------------------------------- identities
def file_identity(path: str) -> dict:
    """What identifies a file's content without reading it: path, size and modification time (an
    object: URL, size and the store's ETag, which changes whenever the object is rewritten)."""
    if urls.is_url(path):
        try:
            meta = urls.info(path)
        except Exception:  # noqa: BLE001 - unreachable now: the inspection says why
            return {"path": path}
        version = {k: str(meta[k]) for k in ("ETag", "etag", "LastModified", "last_modified", "mtime", "VersionId")
                   if meta.get(k) is not None}
        return {"path": path, "size": meta.get("size"), **version}
    try:
        st = os.stat(path)
        return {"path": str(pathlib.Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": path}


def source_identity(ref: SourceRef) -> dict:
    return {**dataclasses.asdict(ref), "files": [file_identity(f) for f in ref.files]}


def model_identity(model: ModelSpec, info: ModelInfo, placement: Placement) -> dict:
    """What the model contributes to results: weights, resolved device type and precision, controls."""
    # resolved: 'auto' and the mode it stands for give the same outputs, so the same unit ids
    reconstruction = info.reconstruction if model.reconstruction == "auto" else model.reconstruction
    identity = {
        "fuser": info.name,
        "weights": model.weights,
        "weights_sha256": info.weights_sha256,
        "device": placement.device,
        "precision": placement.precision,
        "alpha": model.alpha,
        "beta": model.beta,
        "reconstruction": reconstruction,
    }
    if reconstruction == "guided" and info.guided_version is not None:
        identity["guided_version"] = info.guided_version  # new selection rules: new outputs, new units
    return identity


def canonical_job(job: JobSpec, model_key: dict, *, relative_outputs: bool = True) -> dict:
    """What defines a job's results (not its name, batch size or the items found today). An
    output folder inside the run directory is given relative to it, so a run directory moved or
    copied elsewhere (another disk, a bucket) is still the same job's (`relative_outputs=False`:
    the absolute form older run directories recorded)."""
    from pipeline import runstore

    collections = [dataclasses.asdict(c) for c in job.collections]
    if relative_outputs:
        for c in collections:
            c["output"]["dir"] = runstore.relative(c["output"]["dir"], job.run_dir)
    return json.loads(canonical_json({
        "collections": collections,
        "tiling": dataclasses.asdict(job.tiling),
        "model": model_key,
        "max_pixels": job.max_pixels,
    }))


# ----------------------------------------------------------------------------- planning
def _on_grid(info: SourceInfo, grid: Grid) -> bool:
    if (info.width, info.height) != (grid.width, grid.height):
        return False
    if not (info.crs and grid.georeferenced):
        return True
    return info.crs == grid.crs and np.allclose(info.transform, grid.transform, rtol=0, atol=1e-9)


def _output_nodata(spec_nodata: float | None, reference: SourceInfo, dtype: np.dtype, masked: bool) -> float | None:
    if spec_nodata is not None:
        return spec_nodata
    ref = reference.nodata
    if ref is not None:
        if dtype.kind == "f" or (dtype.kind in "iu" and radiometry.INTEGER_RANGES[dtype][0] <= ref <= radiometry.INTEGER_RANGES[dtype][1] and float(ref).is_integer()):
            return float(ref)
    return radiometry.default_nodata(dtype) if masked else None


def infos_to_json(infos: tuple[SourceInfo, ...]) -> str:
    return canonical_json([dataclasses.asdict(i) for i in infos])


def infos_from_json(text: str) -> tuple[SourceInfo, ...]:
    def info(d: dict) -> SourceInfo:
        d = {**d, "transform": tuple(d["transform"]) if d.get("transform") else None, "band_names": tuple(d.get("band_names", ()))}
        if isinstance(d.get("nodata"), str):  # json_safe wrote a non-finite nodata as a string
            d["nodata"] = float(d["nodata"].replace("Infinity", "inf"))
        d["pixel_size"] = PixelSize(**d["pixel_size"]) if d.get("pixel_size") else None
        return SourceInfo(**d)

    return tuple(info(d) for d in json.loads(text))


def plan_item(
    job: JobSpec, collection: CollectionSpec, found: DiscoveredItem, model_key: dict, tile_multiple: int,
    known_infos: Callable[[str], tuple[SourceInfo, ...] | None] = lambda sources_id: None,
) -> tuple[ItemPlan, bool]:
    """Inspect an item's sources (headers only, unless `known_infos` has them for these very files)
    and fix its grid, tiles and output settings. Returns (item, inspected)."""
    sources: list[SourceRef] = []
    for spec in collection.sources:
        files = found.roles[spec.role]
        sources += expand_sources(
            spec.role, list(files.files), kind=spec.kind, bands=spec.bands, band_files=files.band_files,
            multiple=spec.multiple, nodata=spec.nodata, resampling=spec.resampling, normalise=spec.normalise,
        )
    if len(sources) < 2:
        raise SourceError(sources[0].files[0], "the item has a single source; fusion needs two or more")
    sources_id = digest([source_identity(s) for s in sources])
    recorded = known_infos(sources_id)
    infos = list(recorded) if recorded is not None else [inspect(ref) for ref in sources]
    for ref, info in zip(sources, infos):
        if info.width * info.height > job.max_pixels:
            raise SourceError(
                ref.files[0], f"claims {info.width} x {info.height} = {info.width * info.height:,} pixels, "
                f"more than limits.max_pixels ({job.max_pixels:,}); raise the limit if the image is real",
            )
    reference = next(i for i, s in enumerate(sources) if s.role == collection.reference or s.role.startswith(collection.reference + "["))
    grid = infos[reference].grid
    if recorded is None:
        for i, (ref, info) in enumerate(zip(sources, infos)):
            if i != reference:
                check_overlap(ref, info, sources[reference], grid)

    out = collection.output
    dtype = radiometry.output_dtype(out.dtype, np.dtype(infos[reference].dtype))
    masked = any(info.nodata is not None or not _on_grid(info, grid) for info in infos)
    nodata = _output_nodata(out.nodata, infos[reference], dtype, masked)
    out_channels = 3 if any(info.channels == 3 for info in infos) else 1
    if out_channels == infos[reference].channels:
        band_names = tuple(f"{sources[reference].role}:{n}" for n in infos[reference].band_names)
    else:
        band_names = tuple(f"fused_{c + 1}" for c in range(out_channels))
    if "png" in out.formats and dtype not in (np.dtype("uint8"), np.dtype("uint16")):
        raise ValueError(f"item {found.item_id}: png output needs output.dtype uint8 or uint16, not {dtype}")
    ome = [f for f in out.formats if f in OME_FORMATS]
    if ome and grid.georeferenced:
        raise ValueError(f"item {found.item_id}: {', '.join(ome)} output is for microscopy images, and this item is "
                         "georeferenced (OME has no CRS): use zarr or cog")
    base = urls.join(out.dir, out.name.format(item=found.item_id, collection=collection.name))
    tiles = make_grid(grid.height, grid.width, job.tiling.tile, job.tiling.overlap, tile_multiple, job.tiling.border_pad)
    settings = {
        "task": collection.task, "tiling": dataclasses.asdict(job.tiling), "model": model_key,
        "output": {"dtype": str(dtype), "scale": out.scale, "valid": out.valid, "nodata": nodata,
                   "prompt_maps": out.prompt_maps, "chunk": out.chunk, "zarr_format": out.zarr_format},
        "reference": reference, "grid": dataclasses.asdict(grid),
    }
    prepare_id = digest({"sources": [source_identity(s) for s in sources], "settings": settings})
    item = ItemPlan(
        item_id=found.item_id, collection=collection.name, task=collection.task, sources=tuple(sources),
        infos=tuple(infos), reference=reference, grid=grid, tiles=tiles, out_channels=out_channels,
        band_names=band_names, output_dtype=str(dtype), output_nodata=nodata, output_base=str(base),
        formats=out.formats, scale=out.scale, valid_rule=out.valid, prompt_maps=out.prompt_maps,
        window=job.tiling.window, batch_size=job.model.batch_size, chunk=out.chunk,
        cog_blocksize=out.cog_blocksize, compress=out.compress, prepare_id=prepare_id, sources_id=sources_id,
        zarr_format=out.zarr_format, creation_options=out.creation_options,
    )
    return item, recorded is None


def plan_units(item: ItemPlan, block_size: int) -> list[Unit]:
    units = []
    for block in block_grid(item.grid.height, item.grid.width, block_size):
        ys, xs = tiles_for_block(item.tiles, block)
        unit_id = digest({"prepare": item.prepare_id, "block": [block.y0, block.y1, block.x0, block.x1]})
        units.append(Unit(unit_id, item.key, block, tuple(ys), tuple(xs)))
    return units


def plan_job(
    job: JobSpec, model: ModelInfo, placement: Placement,
    known_infos: Callable[[str], tuple[SourceInfo, ...] | None] = lambda sources_id: None,
) -> Plan:
    """Discover and inspect every item (headers only) and cut them into units. Bad items are listed
    in `failures` with the reason; they never stop the others."""
    multiple = model.tile_multiple
    if job.tiling.tile % multiple:
        raise ValueError(f"tiling.tile {job.tiling.tile} is not a multiple of {multiple}, which the model {model.name!r} needs")
    model_key = model_identity(job.model, model, placement)
    canonical = canonical_job(job, model_key)
    items: list[ItemPlan] = []
    units: dict[str, list[Unit]] = {}
    failures: list[dict] = []
    notes: list[str] = []
    outputs_seen: dict[str, str] = {}
    inspected = 0
    inputs: set[str] = set()  # every file any item reads: no output may land on one
    for collection in job.collections:
        root = collection.discover.root
        if collection.discover.type == "glob" and not urls.is_url(root) and not root.is_dir():
            raise JobError(f"collection {collection.name!r}: discover.root {root} "
                           f"{'is not a folder' if root.exists() else 'does not exist'}")
        try:
            found_items = discover(collection)
        except (ValueError, OSError) as exc:
            failures.append({"collection": collection.name, "item_id": "*", "error": str(exc)})
            continue
        if not found_items:
            notes.append(f"collection {collection.name!r}: no items found ({collection.discover.type} discovery under {collection.discover.root})")
        inputs.update(f for found in found_items for role in found.roles.values() for f in role.files)
        for found in found_items:
            if found.error:
                failures.append({"collection": collection.name, "item_id": found.item_id, "error": found.error})
                continue
            try:
                item, fresh = plan_item(job, collection, found, model_key, multiple, known_infos)
                if item.output_base in outputs_seen:
                    raise ValueError(f"output {item.output_base} is also the output of item {outputs_seen[item.output_base]}: make output.name unique")
            except (SourceError, ValueError, OSError) as exc:
                failures.append({"collection": collection.name, "item_id": found.item_id, "error": str(exc)})
                continue
            inspected += fresh
            outputs_seen[item.output_base] = item.key
            items.append(item)
    from pipeline.items import output_paths

    for item in list(items):
        collisions = output_safety.input_collisions(output_paths(item).values(), inputs)
        if collisions:
            items.remove(item)
            failures.append({"collection": item.collection, "item_id": item.item_id, "error": "; ".join(collisions)})
    for item in items:
        units[item.key] = plan_units(item, job.tiling.block)
    legacy = digest(canonical_job(job, model_key, relative_outputs=False), 64)
    return Plan(job, digest(canonical, 64), canonical, model_key, model, items, units, failures, notes, inspected, legacy)


# ----------------------------------------------------------------------------- estimates
def seconds_per_tile(fuser, task: Any, tile_h: int, tile_w: int, batch: int, channels: tuple[int, int] = (3, 1)) -> float:
    """Model time per tile, measured on one batch of random tiles after a warm-up call."""
    import time

    rng = np.random.default_rng(0)
    a = rng.random((batch, tile_h, tile_w, channels[0]), dtype=np.float32)
    b = rng.random((batch, tile_h, tile_w, channels[1]), dtype=np.float32)
    fuser.fuse_batch(a[:1], b[:1], task)
    start = time.perf_counter()
    fuser.fuse_batch(a, b, task)
    return (time.perf_counter() - start) / batch


def describe_plan(plan: Plan, fuser=None) -> dict:
    """Items, units, pixels, tiles per collection and in total; an estimated model time when a
    loaded `fuser` is given to time (planning itself never loads the model)."""
    per_collection: dict[str, dict] = {}
    estimate = 0.0
    timed: dict[tuple, float] = {}
    for item in plan.items:
        units = plan.units[item.key]
        entry = per_collection.setdefault(item.collection, {"items": 0, "units": 0, "pixels": 0, "tiles": 0, "grid_tiles": 0, "model_calls": 0})
        tiles = sum(u.tiles for u in units)
        entry["items"] += 1
        entry["units"] += len(units)
        entry["pixels"] += item.grid.width * item.grid.height
        entry["tiles"] += tiles
        entry["grid_tiles"] += item.tiles.count
        entry["model_calls"] += tiles * (len(item.sources) - 1)
        if fuser is not None:
            shape = (item.tiles.tile_h, item.tiles.tile_w, min(item.batch_size, max(tiles, 1)))
            if shape not in timed:
                timed[shape] = seconds_per_tile(fuser, item.task, *shape)
            estimate += timed[shape] * tiles * (len(item.sources) - 1)
    totals = {k: sum(c[k] for c in per_collection.values()) for k in ("items", "units", "pixels", "tiles", "grid_tiles", "model_calls")}
    return {
        "job": plan.job.name, "run_dir": str(plan.job.run_dir), "fingerprint": plan.fingerprint,
        "model": dataclasses.asdict(plan.model), "model_key": plan.model_key,
        "collections": per_collection, "totals": totals,
        "estimated_seconds": round(estimate, 1) if fuser is not None else None,
        "failures": plan.failures,
        "notes": plan.notes,
    }
