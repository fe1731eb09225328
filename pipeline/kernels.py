"""Compiled per-pixel loops of the engine's hot path: blending tiles into a block, and turning the
blended block into the output dtype.

Each is one pass over the pixels instead of numpy's chain of whole-array temporaries (a weighted
tile add was four passes, the output conversion eight). They run on the calling thread: they
cost ~0.05 s per 4 Mpx block, and a parallel version (numba's OpenMP pool next to torch's) measured
slower overall on 2 cores, so there was nothing to win. The arithmetic is the same
operations in the same order and precision as the numpy forms they replace, so results are
bit-identical; the exactness tests hold them to that.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def accumulate(values, weights, tile, window, valid, use_valid, ty, tx, by, bx, h, w):
    """values[by:by+h, bx:bx+w] += wt * tile[ty:ty+h, tx:tx+w], weights[...] += wt, with
    wt = window (times valid when use_valid; float64, tile values widened before the product)."""
    channels = values.shape[2]
    for i in range(h):
        for j in range(w):
            wt = window[ty + i, tx + j]
            if use_valid and not valid[ty + i, tx + j]:
                wt = 0.0
            weights[by + i, bx + j] += wt
            for c in range(channels):
                values[by + i, bx + j, c] += wt * np.float64(tile[ty + i, tx + j, c])


@numba.njit(cache=True)
def normalise_block(values, weights):
    """values / weights as float32 (h, w, C) and the covered mask (weights > 0; uncovered: 0)."""
    h, w, channels = values.shape
    out = np.empty((h, w, channels), np.float32)
    covered = np.empty((h, w), np.bool_)
    for i in range(h):
        for j in range(w):
            wt = weights[i, j]
            covered[i, j] = wt > 0
            for c in range(channels):
                out[i, j, c] = np.float32(values[i, j, c] / wt) if wt > 0 else np.float32(0.0)
    return out, covered


@numba.njit(cache=True)
def scale_to_integer(values, valid, span, lo, out, lo_d, hi_d, nodata, has_nodata, step):
    """(h, w, C) float32 in [0, 1] -> out (C, h, w) integers: v * span + lo in float32, rounded half
    to even (np.rint), clamped to [lo_d, hi_d]; invalid pixels get nodata and a valid pixel that
    would equal nodata moves one step away from it."""
    h, w, channels = values.shape
    for i in range(h):
        for j in range(w):
            for c in range(channels):
                if has_nodata and not valid[i, j]:
                    out[c, i, j] = nodata
                    continue
                v = values[i, j, c] * span[c]
                v = v + lo[c]
                v = min(max(np.rint(v), lo_d), hi_d)
                if has_nodata and v == nodata:
                    v = nodata + step
                out[c, i, j] = v
