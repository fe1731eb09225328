"""The global tile grid of an item, output blocks, halos and blending.

Tiles are anchored once per item: the first tile starts at -pad and the last one ends flush with
the far edge (+pad), with the fewest tiles whose overlaps are at least the requested one, spaced
evenly (so no tile is spent on a sliver at the end). pad (default 0) adds mirrored context at
the image borders; where a tile leaves the image (pad > 0, or an image smaller than a tile) the
image is reflect-padded. Blending needs no pad: a pixel covered by one tile gets that tile's value
whatever its weight.
A block (a rectangle of the output aligned to the chunk grid) is computed from every tile that
touches it, so each block equals the same region of a whole-image run and blocks are independent.
Overlapping tiles are blended with a window normalised by the summed weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import kernels


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def axis_origins(length: int, tile: int, overlap: int, pad: int = 0) -> tuple[int, ...]:
    """Tile starts along one axis, in image coordinates (negative ones lie in the padding):
    [-pad, length + pad) covered by evenly spaced tiles overlapping by at least `overlap`.
    An axis shorter than a tile gets one tile centred on it."""
    span = length + 2 * pad
    if span <= tile:
        return (-((tile - length) // 2),)
    steps = -(-(span - tile) // (tile - overlap))  # ceil: every step at most tile - overlap
    return tuple(-pad + (k * (span - tile)) // steps for k in range(steps + 1))


@dataclass(frozen=True)
class TileGrid:
    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    pad: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def make_grid(height: int, width: int, tile: int, overlap: int, multiple: int, pad: int = 0) -> TileGrid:
    """The item's grid. Images smaller than a tile get a smaller tile (still a multiple)."""
    tile_h = min(tile, round_up(height + 2 * pad, multiple))
    tile_w = min(tile, round_up(width + 2 * pad, multiple))
    return TileGrid(
        height=height,
        width=width,
        tile_h=tile_h,
        tile_w=tile_w,
        overlap=overlap,
        pad=pad,
        ys=axis_origins(height, tile_h, overlap, pad),
        xs=axis_origins(width, tile_w, overlap, pad),
    )


@dataclass(frozen=True)
class Block:
    """An output rectangle [y0, y1) x [x0, x1) owned by exactly one work unit."""

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def pixels(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


def block_grid(height: int, width: int, block: int) -> list[Block]:
    return [
        Block(r, c, y0, min(y0 + block, height), x0, min(x0 + block, width))
        for r, y0 in enumerate(range(0, height, block))
        for c, x0 in enumerate(range(0, width, block))
    ]


def tiles_for_block(grid: TileGrid, block: Block) -> tuple[list[int], list[int]]:
    """Origins of the tiles that touch the block (rows, columns)."""
    ys = [y for y in grid.ys if y < block.y1 and y + grid.tile_h > block.y0]
    xs = [x for x in grid.xs if x < block.x1 and x + grid.tile_w > block.x0]
    return ys, xs


def read_window(grid: TileGrid, ys: list[int], xs: list[int]) -> tuple[int, int, int, int]:
    """The block plus its halo: the union of its tiles (y0, y1, x0, x1; may extend past the image)."""
    return ys[0], ys[-1] + grid.tile_h, xs[0], xs[-1] + grid.tile_w


def reflect_index(start: int, stop: int, n: int) -> np.ndarray:
    """Image indices for coordinates [start, stop) mirrored at the borders (edge not repeated)."""
    coords = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(coords)
    period = 2 * (n - 1)
    folded = np.mod(coords, period)
    return np.where(folded < n, folded, period - folded)


def _window_1d(length: int, overlap: int, kind: str) -> np.ndarray:
    i = np.arange(length, dtype=np.float64) + 0.5
    if kind == "hann":
        # raised cosine over the whole tile; never exactly 0, so every pixel keeps a weight
        return np.sin(np.pi * i / length) ** 2
    if kind == "tukey" and overlap > 0:
        ramp = np.sin(0.5 * np.pi * np.minimum(i, length - i) / overlap) ** 2
        return np.where(np.minimum(i, length - i) < overlap, ramp, 1.0)
    return np.ones(length)


def blend_window(tile_h: int, tile_w: int, overlap: int, kind: str) -> np.ndarray:
    return np.outer(_window_1d(tile_h, overlap, kind), _window_1d(tile_w, overlap, kind))


class BlockAccumulator:
    """Weighted sums of tile outputs over one block, in float64 so identical tiles blend exactly."""

    def __init__(self, block: Block, channels: int):
        self.block = block
        self.values = np.zeros((*block.shape, channels), np.float64)
        self.weights = np.zeros(block.shape, np.float64)

    def add(self, tile: np.ndarray, origin_y: int, origin_x: int, window: np.ndarray, valid: np.ndarray | None = None) -> None:
        """tile: (th, tw, C) output of the tile at image origin (origin_y, origin_x), weighted by
        window (th, tw) and, where `valid` (th, tw) is False, by 0."""
        b = self.block
        y0, y1 = max(origin_y, b.y0), min(origin_y + tile.shape[0], b.y1)
        x0, x1 = max(origin_x, b.x0), min(origin_x + tile.shape[1], b.x1)
        if y0 >= y1 or x0 >= x1:
            return
        use_valid = valid is not None
        kernels.accumulate(
            self.values, self.weights, tile, np.asarray(window, np.float64),
            valid if use_valid else _NO_MASK, use_valid,
            y0 - origin_y, x0 - origin_x, y0 - b.y0, x0 - b.x0, y1 - y0, x1 - x0,
        )

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(blended values (h, w, C) float32, covered mask (h, w)); uncovered pixels are 0.
        Divides in float64, so identical tiles give back their exact float32 values."""
        return kernels.normalise_block(self.values, self.weights)


_NO_MASK = np.ones((1, 1), bool)
