"""Q_P's masked local correlation (correlation_coeffcient of metricZhao.m), compiled with numba.

For S masked source feature maps and the fused one, the Gaussian-weighted local means, variances
and covariances (filter2 'same': zero padding), the correlation (cov + C) / (sqrt|var_s var_f| + C)
inside each source's mask, the best source per pixel, summed. The numpy form filtered 11 planes
(each source, its square, its product with the fused map; the fused map and its square) in 22
single-threaded scipy passes; here both passes run row by row over all planes at once, with the
same arithmetic as scipy's: float32 planes, products rounded to float32, each pass accumulated in
float64 and rounded to float32 (the Q_P values agree to 1e-9). Measured on a 640x480 plane with 3
sources: 36 ms -> 10 ms.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _planes(srcs: np.ndarray, fused: np.ndarray, y: int, row: np.ndarray) -> None:
    """The planes to filter at row y: s_k, s_k^2, s_k f for each source, then f and f^2 (float32)."""
    n_src, _, width = srcs.shape
    for x in range(width):
        f = fused[y, x]
        for k in range(n_src):
            s = srcs[k, y, x]
            row[3 * k, x] = s
            row[3 * k + 1, x] = s * s
            row[3 * k + 2, x] = s * f
        row[3 * n_src, x] = f
        row[3 * n_src + 1, x] = f * f


@numba.njit(cache=True, nogil=True)
def masked_correlation_sum(srcs: np.ndarray, masks: np.ndarray, fused: np.ndarray, w: np.ndarray, c: float) -> float:
    """Sum over pixels of the largest masked local correlation of any source with the fused map.
    srcs (S, H, W) float32 (already multiplied by their masks), masks (S, H, W) bool, fused
    (H, W) float32, w the separable window's factor (odd length)."""
    n_src, height, width = srcs.shape
    n_planes = 3 * n_src + 2
    radius = w.size // 2
    weights = w.astype(np.float64)
    c32 = np.float32(c)
    # Vertical pass first (as filter2 does), into float32 planes padded with zero columns so that
    # the horizontal pass needs no bounds checks.
    vertical = np.zeros((n_planes, height, width + 2 * radius), np.float32)
    rows = np.empty((w.size, n_planes, width), np.float32)  # ring of the input rows in the window
    filled = np.full(w.size, -1, np.int64)
    acc = np.empty((n_planes, width))
    for y in range(height):
        acc[:] = 0.0
        for t in range(w.size):
            yy = y + t - radius
            if yy < 0 or yy >= height:
                continue
            slot = yy % w.size
            if filled[slot] != yy:
                _planes(srcs, fused, yy, rows[slot])
                filled[slot] = yy
            wt = weights[t]
            for q in range(n_planes):
                for x in range(width):
                    acc[q, x] += wt * rows[slot, q, x]
        for q in range(n_planes):
            for x in range(width):
                vertical[q, y, radius + x] = np.float32(acc[q, x])
    # Horizontal pass row by row, then the correlation of each pixel.
    total = 0.0
    out = np.empty((n_planes, width), np.float32)
    line = np.empty(width)
    for y in range(height):
        for q in range(n_planes):
            line[:] = 0.0
            for t in range(w.size):
                wt = weights[t]
                for x in range(width):
                    line[x] += wt * vertical[q, y, x + t]
            for x in range(width):
                out[q, x] = np.float32(line[x])
        for x in range(width):
            mu_f = out[3 * n_src, x]
            var_f = out[3 * n_src + 1, x] - mu_f * mu_f
            best = np.float32(-np.inf)
            for k in range(n_src):
                mu = out[3 * k, x]
                var = out[3 * k + 1, x] - mu * mu
                cov = out[3 * k + 2, x] - mu * mu_f
                corr = (cov + c32) / (np.sqrt(np.abs(var * var_f)) + c32) if masks[k, y, x] else np.float32(0.0)
                best = max(best, corr)
            total += best
    return total
