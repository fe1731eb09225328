"""The archive engine: plan a job into work units, process units, finish items; the in-process runner.

One unit's walk: job file -> plan (items -> units with deterministic ids) -> `process_unit`: read the
block and its halo from every source on the reference grid -> normalise -> tiles -> `Fuser.fuse_batch`
in batches -> blend -> write the block to the item's store -> a verified status record.

More than two sources are reduced pairwise, tile by tile, in the job's source order (for a stack:
plane order): F = fuse(S1, S2), then F = fuse(F, S3), ... Where a source is nodata, the model is
given the other side's values there, so it fuses a pixel with itself; the prompt maps multiply
the shares through the reduction, giving each source's share of every output pixel.

Units are independent and idempotent: each writes only its own chunk-aligned block and its id is
a hash of its inputs (files with size and mtime, bands, normalisation), window, model and
parameters. Items are prepared (radiometry, store) and finished (file exports, STAC) on the
driver. A cluster runner needs nothing else: it can put the same `process_unit` calls on Ray actors.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from pipeline import fsio, output_safety, radiometry, runtime, verify, writers
from pipeline.discover import DiscoveredItem, discover
from pipeline.errors import JobError, stop_on_signals
from pipeline.manifest import RunDir, RunDirError, canonical_json, digest, now
from pipeline.stac import stac_item, write_run_catalog
from pipeline.tables import ITEMS_SCHEMA, PLAN_SCHEMA
from pipeline.radiometry import Stretch
from pipeline.sources import Grid, SourceError, SourceInfo, SourceRef, check_overlap, expand_sources, inspect, open_reader
from pipeline.spec import CollectionSpec, JobSpec, ModelSpec
from pipeline.tiling import (
    Block, BlockAccumulator, TileGrid, blend_window, block_grid, make_grid, reflect_index, tiles_for_block,
)
from tcmoa.interface import Fuser, FusionResult

FILE_SUFFIXES = {"cog": ".tif", "tiff": ".tiff", "png": ".png"}
STORE_ID_ATTR = "tcmoa:prepare_id"


# ----------------------------------------------------------------------------- plan data
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
    zarr_format: int = 3

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


@dataclass
class Plan:
    job: JobSpec
    fingerprint: str
    canonical_job: dict
    model_key: dict
    items: list[ItemPlan]
    units: dict[str, list[Unit]]
    failures: list[dict]  # items that could not be planned: collection, item_id, error
    notes: list[str] = field(default_factory=list)  # e.g. a collection that found no item

    @property
    def all_units(self) -> list[Unit]:
        return [u for item in self.items for u in self.units[item.key]]


# ----------------------------------------------------------------------------- identities
def file_identity(path: str) -> dict:
    try:
        st = os.stat(path)
        return {"path": str(pathlib.Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": path}


def source_identity(ref: SourceRef) -> dict:
    return {**dataclasses.asdict(ref), "files": [file_identity(f) for f in ref.files]}


def model_identity(model: ModelSpec, fuser: Fuser) -> dict:
    weights = pathlib.Path(model.weights)
    return {
        "fuser": getattr(fuser, "name", type(fuser).__name__),
        "weights": model.weights,
        "weights_sha256": fsio.sha256_file(weights) if weights.is_file() else None,
        "precision": model.precision,
        "alpha": model.alpha,
        "beta": model.beta,
    }


def canonical_job(job: JobSpec, model_key: dict) -> dict:
    """What defines a job's results (not its name, batch size or device)."""
    return json.loads(canonical_json({
        "collections": [dataclasses.asdict(c) for c in job.collections],
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


def plan_item(job: JobSpec, collection: CollectionSpec, found: DiscoveredItem, model_key: dict, tile_multiple: int) -> ItemPlan:
    """Inspect an item's sources (headers only) and fix its grid, tiles and output settings."""
    sources: list[SourceRef] = []
    for spec in collection.sources:
        files = found.roles[spec.role]
        sources += expand_sources(
            spec.role, list(files.files), kind=spec.kind, bands=spec.bands, band_files=files.band_files,
            multiple=spec.multiple, nodata=spec.nodata, resampling=spec.resampling, normalise=spec.normalise,
        )
    if len(sources) < 2:
        raise SourceError(sources[0].files[0], "the item has a single source; fusion needs two or more")
    infos = [inspect(ref) for ref in sources]
    for ref, info in zip(sources, infos):
        if info.width * info.height > job.max_pixels:
            raise SourceError(
                ref.files[0], f"claims {info.width} x {info.height} = {info.width * info.height:,} pixels, "
                f"more than limits.max_pixels ({job.max_pixels:,}); raise the limit if the image is real",
            )
    reference = next(i for i, s in enumerate(sources) if s.role == collection.reference or s.role.startswith(collection.reference + "["))
    grid = infos[reference].grid
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
    base = out.dir / out.name.format(item=found.item_id, collection=collection.name)
    tiles = make_grid(grid.height, grid.width, job.tiling.tile, job.tiling.overlap, tile_multiple, job.tiling.border_pad)
    settings = {
        "task": collection.task, "tiling": dataclasses.asdict(job.tiling), "model": model_key,
        "output": {"dtype": str(dtype), "scale": out.scale, "valid": out.valid, "nodata": nodata,
                   "prompt_maps": out.prompt_maps, "chunk": out.chunk, "zarr_format": out.zarr_format},
        "reference": reference, "grid": dataclasses.asdict(grid),
    }
    prepare_id = digest({"sources": [source_identity(s) for s in sources], "settings": settings})
    return ItemPlan(
        item_id=found.item_id, collection=collection.name, task=collection.task, sources=tuple(sources),
        infos=tuple(infos), reference=reference, grid=grid, tiles=tiles, out_channels=out_channels,
        band_names=band_names, output_dtype=str(dtype), output_nodata=nodata, output_base=str(base),
        formats=out.formats, scale=out.scale, valid_rule=out.valid, prompt_maps=out.prompt_maps,
        window=job.tiling.window, batch_size=job.model.batch_size, chunk=out.chunk,
        cog_blocksize=out.cog_blocksize, compress=out.compress, prepare_id=prepare_id, zarr_format=out.zarr_format,
    )


def plan_units(item: ItemPlan, block_size: int) -> list[Unit]:
    units = []
    for block in block_grid(item.grid.height, item.grid.width, block_size):
        ys, xs = tiles_for_block(item.tiles, block)
        unit_id = digest({"prepare": item.prepare_id, "block": [block.y0, block.y1, block.x0, block.x1]})
        units.append(Unit(unit_id, item.key, block, tuple(ys), tuple(xs)))
    return units


def plan_job(job: JobSpec, fuser: Fuser) -> Plan:
    """Discover and inspect every item (headers only) and cut them into units. Bad items are listed
    in `failures` with the reason; they never stop the others."""
    multiple = int(getattr(fuser, "tile_multiple", 1) or 1)
    if job.tiling.tile % multiple:
        raise ValueError(f"tiling.tile {job.tiling.tile} is not a multiple of {multiple}, which the model {fuser.name!r} needs")
    model_key = model_identity(job.model, fuser)
    canonical = canonical_job(job, model_key)
    items: list[ItemPlan] = []
    units: dict[str, list[Unit]] = {}
    failures: list[dict] = []
    notes: list[str] = []
    outputs_seen: dict[str, str] = {}
    inputs: set[str] = set()  # every file any item reads: no output may land on one
    for collection in job.collections:
        root = collection.discover.root
        if collection.discover.type == "glob" and not root.is_dir():
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
                item = plan_item(job, collection, found, model_key, multiple)
                if item.output_base in outputs_seen:
                    raise ValueError(f"output {item.output_base} is also the output of item {outputs_seen[item.output_base]}: make output.name unique")
            except (SourceError, ValueError, OSError) as exc:
                failures.append({"collection": collection.name, "item_id": found.item_id, "error": str(exc)})
                continue
            outputs_seen[item.output_base] = item.key
            items.append(item)
    for item in list(items):
        collisions = output_safety.input_collisions(output_paths(item).values(), inputs)
        if collisions:
            items.remove(item)
            failures.append({"collection": item.collection, "item_id": item.item_id, "error": "; ".join(collisions)})
    for item in items:
        units[item.key] = plan_units(item, job.tiling.block)
    return Plan(job, digest(canonical, 64), canonical, model_key, items, units, failures, notes)


# ----------------------------------------------------------------------------- preparing an item
def compute_stretches(item: ItemPlan) -> list[Stretch]:
    """Per-source radiometry from a decimated read of each source on the reference grid."""
    stretches = []
    for ref, info in zip(item.sources, item.infos):
        with open_reader(ref, item.grid) as reader:
            raw, valid, factor = reader.read_decimated(ref.normalise.decimate_to)
        if not valid.any():
            raise SourceError(ref.files[0], f"source {ref.role!r}: every pixel is nodata (or outside the file's footprint) on the reference grid")
        try:
            stretches.append(radiometry.compute_stretch(raw, valid, ref.normalise, np.dtype(info.dtype), decimation=factor))
        except ValueError as exc:
            raise SourceError(ref.files[0], f"source {ref.role!r}: {exc}") from None
    return stretches


def store_path(run_dir: RunDir, item: ItemPlan) -> pathlib.Path:
    return run_dir.store_path(item.collection, item.item_id)


def _remove_store(run_dir: RunDir, item: ItemPlan) -> None:
    """Delete the item's work store (if still there) and the folders it leaves empty."""
    store = store_path(run_dir, item)
    fsio.remove(store)
    for folder in (store.parent, run_dir.work_dir):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def store_matches(path: pathlib.Path, prepare_id: str) -> bool:
    import zarr

    try:
        return zarr.open_group(path, mode="r").attrs.get(STORE_ID_ATTR) == prepare_id
    except Exception:  # missing or damaged store: not ours
        return False


def provenance(plan: Plan, item: ItemPlan, stretches: list[Stretch], fuser: Fuser) -> dict:
    import rasterio
    import zarr

    from tcmoa import __version__ as tcmoa_version

    return {
        "job": plan.job.name, "job_fingerprint": plan.fingerprint, "collection": item.collection, "item": item.item_id,
        "task": item.task, "model": fuser.provenance(), "model_key": plan.model_key,
        "tiling": dataclasses.asdict(plan.job.tiling),
        "sources": [{"role": s.role, "files": list(s.files), "bands": s.bands, "plane": s.plane} for s in item.sources],
        "radiometry": {s.role: st.to_dict() for s, st in zip(item.sources, stretches)},
        "output": {"dtype": item.output_dtype, "scale": item.scale, "nodata": item.output_nodata, "valid": item.valid_rule},
        "reduction": "pairwise left fold in source order" if len(item.sources) > 2 else "pair",
        "versions": {"tcmoa": tcmoa_version, "numpy": np.__version__, "rasterio": rasterio.__version__,
                     "gdal": rasterio.__gdal_version__, "zarr": zarr.__version__},
    }


def prepare_item(plan: Plan, item: ItemPlan, run_dir: RunDir, fuser: Fuser, recorded: dict | None) -> tuple[list[Stretch], bool]:
    """Radiometry and the item's store. Returns (stretches, store_created): a re-created store voids
    the item's earlier unit records. Reuses a recorded radiometry when its store is intact."""
    fsio.check_writable(pathlib.Path(item.output_base).parent)
    store = store_path(run_dir, item)
    fsio.remove_stale_temporaries(store)
    if recorded and recorded["status"] == "done" and store_matches(store, item.prepare_id):
        info = json.loads(recorded["info"])
        # what no block writes (metadata, coordinates) must be as created, or the store is re-created
        if verify.store_problem(store, info.get("store")) is None:
            return [Stretch.from_dict(s) for s in info["radiometry"]], False
    stretches = compute_stretches(item)
    attributes = {
        STORE_ID_ATTR: item.prepare_id,
        "title": f"{item.collection}/{item.item_id} fused by TC-MoA",
        "provenance": json.loads(canonical_json(provenance(plan, item, stretches, fuser))),
    }
    prompt_names = [f"share:{role}" for role in item.roles] if item.prompt_maps else None
    with fsio.atomic_path(store, replace_dir=True) as tmp:  # the work store is the run's own
        writers.create_store(
            tmp, grid=item.grid, channels=item.out_channels, dtype=np.dtype(item.output_dtype), nodata=item.output_nodata,
            chunk=item.chunk, band_names=list(item.band_names), prompt_names=prompt_names, attributes=attributes,
            zarr_format=item.zarr_format,
        )
    return stretches, True


# ----------------------------------------------------------------------------- one unit
def _match_channels(x: np.ndarray, channels: int) -> np.ndarray:
    if x.shape[-1] == channels:
        return x
    if channels == 1:
        return x.mean(axis=-1, keepdims=True, dtype=np.float32)
    return np.repeat(x, channels, axis=-1)


def reduce_sources(
    fuser: Fuser, task: Any, tiles: list[np.ndarray], masks: list[np.ndarray], want_shares: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fuse N sources pairwise in order. tiles: per source (n, h, w, C) in [0, 1]; masks: (n, h, w).
    Returns the fused tiles (n, h, w, C) and, if asked, each source's share (n, h, w, N)."""
    fused, fused_valid = tiles[0], masks[0]
    shares = np.ones((*fused.shape[:3], 1), np.float32) if want_shares else None
    for source, valid in zip(tiles[1:], masks[1:]):
        a, b = fused, source
        if not valid.all():
            b = np.where(valid[..., None], b, _match_channels(a, b.shape[-1]))
        if not fused_valid.all():
            a = np.where(fused_valid[..., None], a, _match_channels(source, a.shape[-1]))
        result: FusionResult = fuser.fuse_batch(np.ascontiguousarray(a), np.ascontiguousarray(b), task, return_prompts=want_shares)
        expected = 3 if max(a.shape[-1], b.shape[-1]) == 3 else 1
        if result.image.shape != (*a.shape[:3], expected):
            raise RuntimeError(f"fuser {fuser.name!r} returned shape {result.image.shape}, expected {(*a.shape[:3], expected)}")
        if want_shares:
            if result.prompt_map is None:
                raise RuntimeError(f"fuser {fuser.name!r} gives no prompt maps: set output.prompt_maps: false")
            share_a = np.where(valid, np.where(fused_valid, result.prompt_map, 0.0), 1.0).astype(np.float32)
            shares = np.concatenate([shares * share_a[..., None], (1.0 - share_a)[..., None]], axis=-1)
        fused, fused_valid = result.image.astype(np.float32, copy=False), fused_valid | valid
    return fused, shares


def _read_window(item: ItemPlan, ref: SourceRef, stretch: Stretch, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """A source on the reference grid over [y0, y1) x [x0, x1), reflect-padded where it leaves the image,
    normalised to (h, w, C) float32, with its validity mask."""
    grid = item.grid
    iy, ix = reflect_index(y0, y1, grid.height), reflect_index(x0, x1, grid.width)
    ry0, ry1, rx0, rx1 = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
    with open_reader(ref, grid) as reader:
        raw, valid = reader.read(ry0, ry1, rx0, rx1)
    if (ry0, ry1, rx0, rx1) != (y0, y1, x0, x1):
        rows, cols = np.ix_(iy - ry0, ix - rx0)
        raw, valid = raw[:, rows, cols], valid[rows, cols]
    return radiometry.normalise(raw, stretch), valid


def process_unit(unit: Unit, item: ItemPlan, stretches: list[Stretch], store: pathlib.Path, fuser: Fuser) -> dict:
    """Compute and write one block. Returns {'checksum', 'timings'}; raises on any failure."""
    clock = _Clock()
    tg = item.tiles
    y0, y1, x0, x1 = unit.ys[0], unit.ys[-1] + tg.tile_h, unit.xs[0], unit.xs[-1] + tg.tile_w
    with clock("read"):
        arrays, masks = [], []
        for ref, stretch in zip(item.sources, stretches):
            array, valid = _read_window(item, ref, stretch, y0, y1, x0, x1)
            arrays.append(array)
            masks.append(valid)
        out_valid = np.logical_or.reduce(masks) if item.valid_rule == "union" else np.logical_and.reduce(masks)
        window = blend_window(tg.tile_h, tg.tile_w, tg.overlap, item.window)
    acc = BlockAccumulator(unit.block, item.out_channels)
    share_acc = BlockAccumulator(unit.block, len(item.sources)) if item.prompt_maps else None
    origins = [(ty, tx) for ty in unit.ys for tx in unit.xs]
    for start in range(0, len(origins), item.batch_size):
        batch = origins[start:start + item.batch_size]
        cuts = [(slice(ty - y0, ty - y0 + tg.tile_h), slice(tx - x0, tx - x0 + tg.tile_w)) for ty, tx in batch]
        with clock("model"):
            tiles = [np.stack([a[c] for c in cuts]) for a in arrays]
            tile_masks = [np.stack([m[c] for c in cuts]) for m in masks]
            fused, shares = reduce_sources(fuser, item.task, tiles, tile_masks, item.prompt_maps)
        with clock("blend"):
            for i, ((ty, tx), cut) in enumerate(zip(batch, cuts)):
                acc.add(fused[i], ty, tx, window, out_valid[cut])
                if share_acc is not None:
                    share_acc.add(shares[i], ty, tx, window, out_valid[cut])
    with clock("blend"):
        values, covered = acc.result()  # float32: the fused image at the model's precision
        out = radiometry.to_output(values, covered, stretches[item.reference], np.dtype(item.output_dtype), item.scale, item.output_nodata)
        prompts = None
        if share_acc is not None:
            share_values, _ = share_acc.result()
            prompts = np.ascontiguousarray(share_values.transpose(2, 0, 1))
            prompts[:, ~covered] = np.nan
    with clock("write"):
        checksum = writers.write_block(store, unit.block, out, prompts)
    return {"checksum": checksum, "timings": {**clock.totals, "tiles": len(origins), "pixels": unit.block.pixels}}


class _Clock:
    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[f"{name}_s"] = self.totals.get(f"{name}_s", 0.0) + time.perf_counter() - start


# ----------------------------------------------------------------------------- finishing an item
def output_paths(item: ItemPlan) -> dict[str, pathlib.Path]:
    base = pathlib.Path(item.output_base)
    paths = {fmt: base.with_name(base.name + FILE_SUFFIXES[fmt]) for fmt in item.formats if fmt in FILE_SUFFIXES}
    if "zarr" in item.formats:
        paths["zarr"] = base.with_name(base.name + ".zarr")
    if item.prompt_maps and any(f in FILE_SUFFIXES for f in item.formats):
        suffix = ".prompts.tif" if "cog" in item.formats else ".prompts.tiff"
        paths["prompts"] = base.with_name(base.name + suffix)
    paths["stac"] = base.with_name(base.name + ".stac.json")
    return paths


OUTPUT_KINDS = {"zarr": "zarr store"}  # every other output is a file


def check_item_outputs(plan: Plan, item: ItemPlan, owned: set[str]) -> dict[str, pathlib.Path]:
    """The item's output paths, after refusing (OutputRefused) any that holds something this run
    did not create, unless the job says overwrite (and then only a thing of the same kind)."""
    paths = output_paths(item)
    for fmt, path in paths.items():
        output_safety.check_output(path, OUTPUT_KINDS.get(fmt, "file"), owned=owned, overwrite=plan.job.overwrite)
    return paths


def remove_interrupted_temporaries(plan: Plan, run_dir: RunDir) -> list[pathlib.Path]:
    """Temporaries left by a killed run (half-written exports and stores) of this job's items."""
    removed = []
    for item in plan.items:
        for path in [*output_paths(item).values(), store_path(run_dir, item)]:
            removed += fsio.remove_stale_temporaries(path)
    return removed


def finalize_item(plan: Plan, item: ItemPlan, store: pathlib.Path, stretches: list[Stretch], fuser: Fuser,
                  owned: set[str] = frozenset()) -> dict[str, dict]:
    """Export the files of a finished item, write its STAC Item, move its store into the outputs.
    `owned`: output paths this run created (they may be replaced). On failure everything this
    call wrote is removed again."""
    paths = check_item_outputs(plan, item, owned)
    tags = {
        "TCMOA_JOB": plan.job.name, "TCMOA_ITEM": item.key, "TCMOA_TASK": json.dumps(item.task),
        "TCMOA_PROVENANCE": canonical_json(provenance(plan, item, stretches, fuser)),
    }
    common = dict(grid=item.grid, blocksize=item.cog_blocksize, compress=item.compress, rows=item.chunk, tags=tags)
    written: list[pathlib.Path] = []
    assets: dict[str, dict] = {}
    try:
        targets = {fmt: paths[fmt] for fmt in item.formats if fmt in FILE_SUFFIXES}
        if targets:
            written += writers.export_files(store, targets, array=writers.FUSED, nodata=item.output_nodata,
                                            band_names=list(item.band_names), **common).values()
        if "prompts" in paths:
            fmt = "cog" if "cog" in item.formats else "tiff"
            written += writers.export_files(store, {fmt: paths["prompts"]}, array=writers.PROMPTS, nodata=float("nan"),
                                            band_names=[f"share:{r}" for r in item.roles], **common).values()
        for fmt, path in paths.items():
            if fmt == "stac":
                continue
            source = store if fmt == "zarr" else path
            assets[fmt] = {"path": str(path), "format": "cog" if fmt == "prompts" and "cog" in item.formats else ("tiff" if fmt == "prompts" else fmt),
                           "sha256": fsio.sha256_output(source), "size": fsio.output_size(source),
                           "roles": ["data"] if fmt != "prompts" else ["metadata"]}
        with fsio.atomic_path(paths["stac"]) as tmp:
            stac = stac_item(item, assets,
                             {"tcmoa:job": plan.job.name, "tcmoa:task": item.task, "tcmoa:fuser": getattr(fuser, "name", "")},
                             paths["stac"])
            tmp.write_text(json.dumps(stac, indent=2))
        written.append(paths["stac"])
        if "zarr" in paths:  # checked above: nothing there, or a store this run made (or may overwrite)
            fsio.move_into_place(store, paths["zarr"], replace_dir=True)
        else:
            fsio.remove(store)
    except Exception:
        for path in written:
            fsio.remove(path)
        raise
    assets["stac"] = {"path": str(paths["stac"]), "format": "stac", "sha256": fsio.sha256_file(paths["stac"]),
                      "size": paths["stac"].stat().st_size}
    return assets


# ----------------------------------------------------------------------------- the in-process runner
@dataclass
class RunSummary:
    job: str
    run_dir: str
    fingerprint: str
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


def load_model_fuser(model: ModelSpec) -> Fuser:
    try:
        from tcmoa.inference import load_fuser
    except ImportError as exc:
        raise RuntimeError(f"the model library has no tcmoa.inference.load_fuser ({exc})") from None
    options = {"precision": model.precision, "batch_size": model.batch_size, "alpha": model.alpha, "beta": model.beta,
               "reconstruction": model.reconstruction}
    if model.device != "auto":
        options["device"] = model.device
    return load_fuser(model.weights, **options)


class _Recorder:
    """Appends each status record to the run directory as soon as it is made (fsynced with its
    part file: a kill loses no finished block), merging every `merge_every` new parts into one so a
    long run does not leave one file per block. `seconds`: the time spent appending."""

    def __init__(self, run_dir: RunDir, merge_every: int = 64):
        self.run_dir, self.merge_every = run_dir, merge_every
        self.parts: list[pathlib.Path] = []  # appended since the last merge
        self.seconds = 0.0

    def add(self, record: dict) -> None:
        start = time.perf_counter()
        self.parts.append(self.run_dir.append([record]))
        if len(self.parts) >= self.merge_every:
            self.run_dir.compact(self.parts)
            self.parts = []
        self.seconds += time.perf_counter() - start


def _record(kind: str, rid: str, item: ItemPlan, status: str, started, **extra) -> dict:
    finished = now()
    return {"kind": kind, "id": rid, "item": item.key, "item_id": item.item_id, "collection": item.collection, "status": status,
            "started": started, "finished": finished, "seconds": (finished - started).total_seconds(), **extra}


def _failure_fields(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, (SourceError, OSError)) else str(exc),
            "traceback": "".join(traceback.format_exception(exc))}


def write_plan_tables(run_dir: RunDir, plan: Plan) -> None:
    run_dir.write_table("items.parquet", [
        {"item": i.key, "collection": i.collection, "item_id": i.item_id, "status": "planned", "error": None,
         "width": i.grid.width, "height": i.grid.height, "crs": i.grid.crs, "sources": canonical_json([source_identity(s) for s in i.sources]),
         "units": len(plan.units[i.key]), "prepare_id": i.prepare_id, "finalize_id": i.finalize_id, "output": i.output_base}
        for i in plan.items
    ] + [
        {"item": f"{f['collection']}/{f['item_id']}", "collection": f["collection"], "item_id": f["item_id"], "status": "failed", "error": f["error"], "width": None,
         "height": None, "crs": None, "sources": None, "units": 0, "prepare_id": None, "finalize_id": None, "output": None}
        for f in plan.failures
    ], schema=ITEMS_SCHEMA)
    run_dir.write_table("plan.parquet", [
        {"unit_id": u.unit_id, "item": u.item_key, "block_row": u.block.row, "block_col": u.block.col,
         "y0": u.block.y0, "y1": u.block.y1, "x0": u.block.x0, "x1": u.block.x1, "tiles": u.tiles, "pixels": u.block.pixels}
        for u in plan.all_units
    ], schema=PLAN_SCHEMA)


def run_job(
    job: JobSpec, *, fuser: Fuser | None = None, resume: bool = False, retry_failed: bool = False,
    progress: bool = True, report: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run every unit of the job in this process; failed items are recorded and the others go on."""
    from tqdm.auto import tqdm

    report = report or (lambda message: None)
    start = time.perf_counter()
    runtime.tune_allocator()  # before the model and the first blocks allocate
    fuser = fuser or load_model_fuser(job.model)
    plan = plan_job(job, fuser)
    run_dir = RunDir(job.run_dir)
    summary = RunSummary(job.name, str(run_dir.path), plan.fingerprint)
    with run_dir, stop_on_signals():
        run_dir.claim(plan.fingerprint, plan.canonical_job, job.name)
        latest = run_dir.latest()
        if latest and not (resume or retry_failed):
            done = sum(1 for r in latest.values() if r["kind"] == "unit" and r["status"] == "done")
            raise RunDirError(
                f"{run_dir.path}: run directory already holds a run of this job ({done} units done): "
                "pass --resume to continue it (done units are skipped) or --retry-failed to also re-run failed ones"
            )
        write_plan_tables(run_dir, plan)
        summary.temporaries_removed = len(remove_interrupted_temporaries(plan, run_dir))
        for note in plan.notes:
            report(note)
        for failure in plan.failures:
            summary.failures.append({**failure, "stage": "plan"})
            report(f"FAILED {failure['collection']}/{failure['item_id']}: {failure['error']}")
        recorder = _Recorder(run_dir)
        total_units = len(plan.all_units)
        with tqdm(total=total_units, unit="block", disable=not progress, desc=job.name, dynamic_ncols=True) as bar:
            try:
                for item in plan.items:
                    _run_item(plan, item, run_dir, fuser, latest, recorder, summary, bar, retry_failed, report)
            finally:
                summary.status_flush_s = recorder.seconds
        run_dir.compact()
        write_run_catalog(run_dir.path, job.name, {c.name: f"{c.name}: {json.dumps(c.task)} fusion" for c in job.collections})
    summary.seconds = time.perf_counter() - start
    summary.items_failed = len(summary.failures)
    return summary


def item_already_done(record: dict | None, problems: list) -> bool:
    """Resume rule: an item is done when its exports have a done record and the check of the
    outputs it lists (`verify.item_output_problems`) found no problem."""
    return bool(record and record["status"] == "done" and not problems)


def unit_already_done(record: dict | None, store_created: bool, problem) -> bool:
    """Resume rule: a block is done when it has a done record, its store was not re-created since,
    and the store still holds what was recorded (`verify.block_problem` found nothing)."""
    return bool(record and record["status"] == "done" and not store_created and problem is None)


def _redo(summary: RunSummary, report, problem: verify.Problem) -> None:
    summary.redone.append(problem.to_dict())
    report(f"REDO {problem.item}: {problem}")


def _run_item(plan, item, run_dir, fuser, latest, recorder, summary, bar, retry_failed, report) -> None:
    """Resume rules: a done item whose outputs check out is skipped; a done block is skipped when
    its store was not re-created and still holds its checksum; recorded failures (prepare, block)
    stop the item unless retry_failed; exports of an item whose blocks are all done are always
    (re-)attempted. Outputs never replace what the run did not create."""
    units = plan.units[item.key]
    finished = latest.get(("item", item.finalize_id))
    problems = verify.item_output_problems(finished) if finished and finished["status"] == "done" else []
    if item_already_done(finished, problems):
        summary.items_skipped += 1
        summary.units_skipped += len(units)
        bar.update(len(units))
        return
    for problem in problems:
        _redo(summary, report, problem)

    def fail(stage: str, error: str) -> None:
        summary.failures.append({"collection": item.collection, "item_id": item.item_id, "stage": stage, "error": error})
        report(f"FAILED {item.key} ({stage}): {error}")
        bar.update(len(units) - done)
        if done == 0:  # nothing worth resuming: leave no partial store behind
            _remove_store(run_dir, item)

    done = 0  # blocks of this item done (read by fail)
    owned = output_safety.owned_paths(latest)

    def outputs_refused() -> str | None:
        """Why the item's outputs may not be written (recorded as its export's failure), or None."""
        try:
            check_item_outputs(plan, item, owned)
        except output_safety.OutputRefused as exc:
            recorder.add(_record("item", item.finalize_id, item, "failed", now(), error=str(exc)))
            return str(exc)
        return None

    if why := outputs_refused():  # before any work: refuse early what the export would refuse
        return fail("outputs", why)
    bar.set_postfix_str(f"preparing {item.key}")
    prepared = latest.get(("prepare", item.prepare_id))
    if prepared and prepared["status"] == "failed" and not retry_failed:
        return fail("prepare", prepared["error"] + " (recorded earlier; --retry-failed re-runs it)")
    started = now()
    try:
        stretches, fresh = prepare_item(plan, item, run_dir, fuser, prepared)
    except Exception as exc:
        fields = _failure_fields(exc)
        recorder.add(_record("prepare", item.prepare_id, item, "failed", started, **fields))
        return fail("prepare", fields["error"])
    store = store_path(run_dir, item)
    recorder.add(_record("prepare", item.prepare_id, item, "done", started, info=canonical_json({
        "radiometry": [s.to_dict() for s in stretches], "store": verify.store_static_digest(store)})))
    bar.set_postfix_str(item.key)
    for unit in units:
        record = latest.get(("unit", unit.unit_id))
        problem = None
        if record and record["status"] == "done" and not fresh:  # a re-created store voids done records
            problem = verify.block_problem(store, unit.block, record["checksum"], item=item.key)
            if unit_already_done(record, fresh, problem):
                summary.units_skipped += 1
                done += 1
                bar.update(1)
                continue
            _redo(summary, report, problem)
        if record and record["status"] == "failed" and not retry_failed:
            return fail("unit", record["error"] + " (recorded earlier; --retry-failed re-runs it)")
        started = now()
        try:
            result = process_unit(unit, item, stretches, store, fuser)
        except Exception as exc:
            fields = _failure_fields(exc)
            recorder.add(_record("unit", unit.unit_id, item, "failed", started, **fields))
            return fail("unit", fields["error"])
        recorder.add(_record("unit", unit.unit_id, item, "done", started, checksum=result["checksum"],
                             timings=json.dumps(result["timings"])))
        summary.units_run += 1
        summary.pixels += unit.block.pixels
        summary.tiles += unit.tiles
        done += 1
        bar.update(1)
    bar.set_postfix_str(f"exporting {item.key}")
    if why := outputs_refused():  # something may have appeared there while the blocks ran
        return fail("outputs", why)
    started = now()
    # claimed before the first rename: after a kill mid-export these paths are still the run's own
    claimed = [str(p) for p in output_paths(item).values()]
    recorder.add(_record(output_safety.CLAIM, item.finalize_id, item, "claimed", started,
                         info=canonical_json({"paths": claimed})))
    try:
        assets = finalize_item(plan, item, store, stretches, fuser, owned | {os.path.abspath(p) for p in claimed})
    except Exception as exc:
        fields = _failure_fields(exc)
        recorder.add(_record("item", item.finalize_id, item, "failed", started, **fields))
        return fail("export", fields["error"])
    _remove_store(run_dir, item)
    recorder.add(_record("item", item.finalize_id, item, "done", started, checksum=assets["stac"]["sha256"],
                         info=canonical_json({"assets": assets})))
    summary.items_done += 1
    summary.outputs[item.key] = {fmt: a["path"] for fmt, a in assets.items()}


# ----------------------------------------------------------------------------- estimates
def seconds_per_tile(fuser: Fuser, task: Any, tile_h: int, tile_w: int, batch: int, channels: tuple[int, int] = (3, 1)) -> float:
    """Model time per tile, measured on one batch of random tiles after a warm-up call."""
    rng = np.random.default_rng(0)
    a = rng.random((batch, tile_h, tile_w, channels[0]), dtype=np.float32)
    b = rng.random((batch, tile_h, tile_w, channels[1]), dtype=np.float32)
    fuser.fuse_batch(a[:1], b[:1], task)
    start = time.perf_counter()
    fuser.fuse_batch(a, b, task)
    return (time.perf_counter() - start) / batch


def describe_plan(plan: Plan, fuser: Fuser | None) -> dict:
    """Items, units, pixels, tiles and an estimated model time, per collection and in total."""
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
        "collections": per_collection, "totals": totals,
        "estimated_seconds": round(estimate, 1) if fuser is not None else None,
        "failures": plan.failures,
        "notes": plan.notes,
    }
