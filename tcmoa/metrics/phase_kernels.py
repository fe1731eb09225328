"""The per-orientation step of myphasecong3 (phase congruency for Q_P), compiled with numba.

Given one orientation's filter responses at every scale, the numpy form made some twenty passes
over (scales, H, W) temporaries; these loops do the same float32 arithmetic in the same order (sums
over scales in scale order), row by row so that they vectorise. The noise threshold needs the
median squared response at the finest scale: an exact radix selection (2.0 -> 0.4 ms on 640x480).
Phase congruency maps agree with the numpy form to 3e-7, Q_P values to ~1e-8 relative.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, error_model="numpy")
def orientation_energy(eo: np.ndarray, energy: np.ndarray, sum_an: np.ndarray, max_an: np.ndarray, sq0: np.ndarray, eps: float) -> None:
    """Per pixel of the responses eo (S, H, W) complex64: the energy along the mean phase before
    noise removal, the summed and the largest amplitude, and the squared amplitude at the finest
    scale (for the noise estimate)."""
    n_scale, height, width = eo.shape
    e32 = np.float32(eps)
    # Row buffers so that every inner loop runs along x (and vectorises).
    sum_e, sum_o, norm2 = np.empty(width, np.float32), np.empty(width, np.float32), np.empty(width, np.float32)
    mean_e, mean_o, x_energy = np.empty(width, np.float32), np.empty(width, np.float32), np.empty(width, np.float32)
    spread = np.empty(width, np.float32)
    for y in range(height):
        for x in range(width):
            v = eo[0, y, x]
            a = np.sqrt(v.real * v.real + v.imag * v.imag)  # |v| (abs() would not vectorise)
            sum_an[y, x] = a
            max_an[y, x] = a
            sq0[y, x] = a * a
            sum_e[x] = v.real
            sum_o[x] = v.imag
        for s in range(1, n_scale):
            for x in range(width):
                v = eo[s, y, x]
                a = np.sqrt(v.real * v.real + v.imag * v.imag)
                sum_an[y, x] += a
                max_an[y, x] = max(max_an[y, x], a)
                sum_e[x] += v.real
                sum_o[x] += v.imag
        for x in range(width):
            norm2[x] = sum_e[x] * sum_e[x] + sum_o[x] * sum_o[x]
            x_energy[x] = np.sqrt(norm2[x]) + e32
            mean_e[x], mean_o[x] = sum_e[x] / x_energy[x], sum_o[x] / x_energy[x]
            spread[x] = np.float32(0.0)
        for s in range(n_scale):
            for x in range(width):
                v = eo[s, y, x]
                spread[x] += abs(v.real * mean_o[x] - v.imag * mean_e[x])
        for x in range(width):
            energy[y, x] = norm2[x] / x_energy[x] - spread[x]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def accumulate_orientation(
    energy: np.ndarray, sum_an: np.ndarray, max_an: np.ndarray, threshold: float, n_scale: int, eps: float,
    cut_off: float, gain: float, cos_a: float, sin_a: float,
    total_energy: np.ndarray, total_an: np.ndarray, covx2: np.ndarray, covy2: np.ndarray, covxy: np.ndarray,
) -> None:
    """Noise-thresholded energy weighted by the frequency spread, added to the running totals and
    to the covariance of the oriented phase congruency."""
    height, width = energy.shape
    thr, e32 = np.float32(threshold), np.float32(eps)
    cut, g, n = np.float32(cut_off), np.float32(gain), np.float32(n_scale)
    ca, sa = np.float32(cos_a), np.float32(sin_a)
    one = np.float32(1.0)
    for y in range(height):
        for x in range(width):
            e = max(energy[y, x] - thr, np.float32(0.0))
            an = sum_an[y, x]
            spread_width = an / (max_an[y, x] + e32) / n
            weight = one / (one + np.exp((cut - spread_width) * g))
            weighted = weight * e
            total_an[y, x] += an
            total_energy[y, x] += weighted
            pc = weighted / an
            cx, cy = pc * ca, pc * sa
            covx2[y, x] += cx * cx
            covy2[y, x] += cy * cy
            covxy[y, x] += cx * cy


@numba.njit(cache=True, nogil=True)
def _smallest(bits: np.ndarray, rank: int) -> np.uint32:
    """The rank-th smallest (0-based) of non-negative float32 values given as their uint32 bits
    (ordered like the values): a histogram of the top 16 bits finds the bucket, which is sorted."""
    counts = np.zeros(1 << 16, np.int64)
    for v in bits:
        counts[v >> 16] += 1
    below = 0
    bucket = 0
    while below + counts[bucket] <= rank:
        below += counts[bucket]
        bucket += 1
    members = np.empty(counts[bucket], np.uint32)
    m = 0
    for v in bits:
        if v >> 16 == bucket:
            members[m] = v
            m += 1
    members.sort()
    return members[rank - below]


@numba.njit(cache=True, nogil=True)
def _median_bits(bits: np.ndarray) -> tuple:
    n = bits.size
    upper = _smallest(bits, n // 2)
    lower = upper if n % 2 else _smallest(bits, n // 2 - 1)
    return lower, upper


def median_nonnegative(values: np.ndarray) -> np.float32:
    """np.median of non-negative finite float32 values, exactly (the two middle values' float32
    mean for an even count), by radix selection instead of a partition (4x faster on 640x480)."""
    flat = np.ascontiguousarray(values, dtype=np.float32).ravel()
    if flat.size == 0:
        return np.float32(np.nan)
    lower, upper = _median_bits(flat.view(np.uint32))
    low, high = np.array([lower, upper], np.uint32).view(np.float32)
    return (low + high) / np.float32(2) if flat.size % 2 == 0 else high
