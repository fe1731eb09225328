"""One work unit in three stages: read its inputs, fuse its tiles into a block, write the block.

    read_inputs   every source over the block and its halo, on the reference grid, reflect-padded
                  at image borders, normalised to float32 in [0, 1], with validity masks
    fuse_block    arrays in, arrays out, no I/O: `run_model` cuts the tiles and runs the model in
                  batches (more than two sources are reduced pairwise in order), `blend_tiles`
                  blends them with the window normalised by the summed weights and converts to
                  the output dtype (a runner keeps the model busy by blending off its stage)
    write_block   write the block to the item's store and read it back: the checksum is of what
                  the store holds, so a 'done' record is only ever made of a verified block

Where a source is nodata the model is given the other side's values there, so it fuses a pixel
with itself; the prompt maps multiply the shares through the reduction, giving each source's
share of every output pixel. A runner keeps one `ReaderCache` per worker (one thread), so a
file is opened, and a photo decoded, once for all the units of an item, not once per unit.
"""
from __future__ import annotations

import collections
import contextlib
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from pipeline import radiometry, writers
from pipeline.plan import ItemPlan, Unit
from pipeline.radiometry import Stretch
from pipeline.sources import Grid, Reader, SourceRef, open_reader
from pipeline.tiling import BlockAccumulator, blend_window, reflect_index
from tcmoa.interface import Fuser, FusionResult


class ReaderCache:
    """Open readers kept for reuse, least recently used closed first. Not for sharing between
    threads (GDAL handles must not be used from two threads at once)."""

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self.readers: collections.OrderedDict[tuple[SourceRef, Grid], Reader] = collections.OrderedDict()
        self.opened = 0  # readers opened so far (photos: decoded)

    def get(self, ref: SourceRef, grid: Grid) -> Reader:
        key = (ref, grid)
        reader = self.readers.pop(key, None)
        if reader is None:
            reader = open_reader(ref, grid).__enter__()
            self.opened += 1
        self.readers[key] = reader
        while len(self.readers) > self.capacity:
            _, oldest = self.readers.popitem(last=False)
            oldest.close()
        return reader

    def drop(self, refs) -> None:
        """Close the readers of these sources (an item whose units are all done)."""
        for key in [k for k in self.readers if k[0] in set(refs)]:
            self.readers.pop(key).close()

    def close(self) -> None:
        while self.readers:
            self.readers.popitem()[1].close()

    def __enter__(self) -> "ReaderCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Inputs:
    """A unit's sources over its tiles' extent: arrays (h, w, C) in [0, 1] and masks (h, w)."""

    y0: int
    x0: int
    arrays: list[np.ndarray]
    masks: list[np.ndarray]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class FusedBlock:
    fused: np.ndarray  # (C, h, w) in the output dtype
    prompts: np.ndarray | None  # (N, h, w) float32 shares, or None
    timings: dict[str, float] = field(default_factory=dict)


class Clock:
    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[f"{name}_s"] = self.totals.get(f"{name}_s", 0.0) + time.perf_counter() - start


# ----------------------------------------------------------------------------- read
def _read_window(reader: Reader, item: ItemPlan, stretch: Stretch, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    """A source on the reference grid over [y0, y1) x [x0, x1), reflect-padded where it leaves the image,
    normalised to (h, w, C) float32, with its validity mask."""
    grid = item.grid
    iy, ix = reflect_index(y0, y1, grid.height), reflect_index(x0, x1, grid.width)
    ry0, ry1, rx0, rx1 = int(iy.min()), int(iy.max()) + 1, int(ix.min()), int(ix.max()) + 1
    raw, valid = reader.read(ry0, ry1, rx0, rx1)
    if (ry0, ry1, rx0, rx1) != (y0, y1, x0, x1):
        rows, cols = np.ix_(iy - ry0, ix - rx0)
        raw, valid = raw[:, rows, cols], valid[rows, cols]
    return radiometry.normalise(raw, stretch), valid


def read_inputs(unit: Unit, item: ItemPlan, stretches: list[Stretch], readers: ReaderCache) -> Inputs:
    clock = Clock()
    tg = item.tiles
    y0, y1, x0, x1 = unit.ys[0], unit.ys[-1] + tg.tile_h, unit.xs[0], unit.xs[-1] + tg.tile_w
    with clock("read"):
        arrays, masks = [], []
        for ref, stretch in zip(item.sources, stretches):
            array, valid = _read_window(readers.get(ref, item.grid), item, stretch, y0, y1, x0, x1)
            arrays.append(array)
            masks.append(valid)
    return Inputs(y0, x0, arrays, masks, clock.totals)


# ----------------------------------------------------------------------------- fuse
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


@dataclass
class ModelTiles:
    """The model's output for every tile of a unit, batch by batch, before blending."""

    batches: list[tuple[list[tuple[int, int]], np.ndarray, np.ndarray | None]]  # (origins, fused, shares)
    timings: dict[str, float] = field(default_factory=dict)


def run_model(unit: Unit, item: ItemPlan, inputs: Inputs, fuser: Fuser) -> ModelTiles:
    """Cut the unit's tiles from its inputs and fuse them in batches (the only stage on the model)."""
    clock = Clock()
    tg = item.tiles
    origins = [(ty, tx) for ty in unit.ys for tx in unit.xs]
    batches = []
    with clock("model"):
        for start in range(0, len(origins), item.batch_size):
            batch = origins[start:start + item.batch_size]
            cuts = [(slice(ty - inputs.y0, ty - inputs.y0 + tg.tile_h), slice(tx - inputs.x0, tx - inputs.x0 + tg.tile_w)) for ty, tx in batch]
            tiles = [np.stack([a[c] for c in cuts]) for a in inputs.arrays]
            tile_masks = [np.stack([m[c] for c in cuts]) for m in inputs.masks]
            batches.append((batch, *reduce_sources(fuser, item.task, tiles, tile_masks, item.prompt_maps)))
    return ModelTiles(batches, clock.totals)


def blend_tiles(unit: Unit, item: ItemPlan, stretches: list[Stretch], inputs: Inputs, tiles: ModelTiles) -> FusedBlock:
    """Blend the fused tiles into the unit's block (window normalised by the summed weights) and
    convert it to the output dtype."""
    clock = Clock()
    tg = item.tiles
    with clock("blend"):
        out_valid = np.logical_or.reduce(inputs.masks) if item.valid_rule == "union" else np.logical_and.reduce(inputs.masks)
        window = blend_window(tg.tile_h, tg.tile_w, tg.overlap, item.window)
        acc = BlockAccumulator(unit.block, item.out_channels)
        share_acc = BlockAccumulator(unit.block, len(item.sources)) if item.prompt_maps else None
        for batch, fused, shares in tiles.batches:
            for i, (ty, tx) in enumerate(batch):
                cut = (slice(ty - inputs.y0, ty - inputs.y0 + tg.tile_h), slice(tx - inputs.x0, tx - inputs.x0 + tg.tile_w))
                acc.add(fused[i], ty, tx, window, out_valid[cut])
                if share_acc is not None:
                    share_acc.add(shares[i], ty, tx, window, out_valid[cut])
        values, covered = acc.result()  # float32: the fused image at the model's precision
        out = radiometry.to_output(values, covered, stretches[item.reference], np.dtype(item.output_dtype), item.scale, item.output_nodata)
        prompts = None
        if share_acc is not None:
            share_values, _ = share_acc.result()
            prompts = np.ascontiguousarray(share_values.transpose(2, 0, 1))
            prompts[:, ~covered] = np.nan
    tile_count = sum(len(batch) for batch, _, _ in tiles.batches)
    return FusedBlock(out, prompts, {**tiles.timings, **clock.totals, "tiles": tile_count, "pixels": unit.block.pixels})


def fuse_block(unit: Unit, item: ItemPlan, stretches: list[Stretch], inputs: Inputs, fuser: Fuser) -> FusedBlock:
    """The unit's block from its inputs: tiles -> model -> blend -> output dtype (arrays in, arrays out)."""
    return blend_tiles(unit, item, stretches, inputs, run_model(unit, item, inputs, fuser))


# ----------------------------------------------------------------------------- write
def write_block(store: pathlib.Path, unit: Unit, block: FusedBlock, zarr_format: int | None = None) -> str:
    """Write the block into the item's store; the checksum is of the block read back."""
    return writers.write_block(store, unit.block, block.fused, block.prompts, zarr_format)


def process_unit(unit: Unit, item: ItemPlan, stretches: list[Stretch], store: pathlib.Path, fuser: Fuser,
                 readers: ReaderCache | None = None) -> dict:
    """The three stages in a row. Returns {'checksum', 'timings'}; raises on any failure."""
    with contextlib.ExitStack() as stack:
        readers = readers or stack.enter_context(ReaderCache())
        inputs = read_inputs(unit, item, stretches, readers)
        block = fuse_block(unit, item, stretches, inputs, fuser)
        start = time.perf_counter()
        checksum = write_block(store, unit, block, item.zarr_format)
    return {"checksum": checksum, "timings": {**inputs.timings, **block.timings, "write_s": time.perf_counter() - start}}
