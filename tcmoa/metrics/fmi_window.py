"""FMI of one pair of windows (the inner loop of Haghighat's fmi.m), compiled with numba.

A window has only L = w^2 values, so whole-array numpy spends its time on dozens of passes over
(L, N) temporaries; one compiled loop per window does the same arithmetic in registers, in the
same order (sequential sums), so the values agree with the vectorised form to rounding.

The joint pdf is phi * U + (1 - phi) * f a^T with U the Frechet-bound coupling of the two
marginals (upper bound for a non-negative correlation, lower bound otherwise). U is non-zero on
at most 2L - 1 cells, a staircase read off the merged breakpoints of the two CDFs, so the joint
entropy is the closed form of the product part plus corrections on those cells rather than a sum
over all L^2 cells.

This per-window form is the reference (tests check it against the literal L^2-cell loop); FMI maps
run the same arithmetic on many windows side by side in `fmi_lanes`.
"""
from __future__ import annotations

import threading

import numba
import numpy as np

from tcmoa.metrics.fmi_lanes import map_window_fmi


@numba.njit(cache=True, inline="always")
def _neg_xlog2x(x: float) -> float:
    """-x log2 |x|, 0 at 0 (MATLAB's real(-x .* log2(x)) also for negative x)."""
    return 0.0 if x == 0 else -x * np.log2(abs(x))


@numba.njit(cache=True)
def _window_pdf(raw: np.ndarray, out: np.ndarray) -> None:
    """fmi.m's marginal pdf: min-max normalised (a constant window becomes all ones), sum 1."""
    lo, hi = raw.min(), raw.max()
    total = 0.0
    for i in range(raw.size):
        out[i] = 1.0 if hi == lo else (raw[i] - lo) / (hi - lo)
        total += out[i]
    for i in range(raw.size):
        out[i] /= total


@numba.njit(cache=True)
def window_pdfs(vec: np.ndarray) -> np.ndarray:
    """The pdf of each column of (L, N) raw window values."""
    out = np.empty(vec.shape)
    pdf = np.empty(vec.shape[0])
    for k in range(vec.shape[1]):
        _window_pdf(np.ascontiguousarray(vec[:, k]), pdf)
        out[:, k] = pdf
    return out


@numba.njit(cache=True)
def fused_terms(fus: np.ndarray, log_f: np.ndarray) -> float:
    """log2 of each cell of the fused window's pdf (0 at 0) into log_f; returns its entropy."""
    h_f = 0.0
    for i in range(fus.size):
        log_f[i] = np.log2(fus[i]) if fus[i] > 0 else 0.0
        h_f -= fus[i] * log_f[i]
    return h_f


@numba.njit(cache=True)
def window_fmi(
    src: np.ndarray, fus: np.ndarray, log_f: np.ndarray, h_f: float, scratch: np.ndarray, counts: np.ndarray
) -> float:
    """FMI of one window pair given the two (L,) pdfs and `fused_terms` of the fused one (shared
    by the sources); scratch (5, 2L) floats and counts (3, 2L) ints are work space (no
    allocation per window)."""
    l = src.size
    cdf_a, cdf_f, b, log_a = scratch[0, :l], scratch[1, :l], scratch[2, :l], scratch[3, :l]
    length = scratch[4]
    f_cell, b_count, f_above = counts[0], counts[1], counts[2]
    mean_a, mean_f = src.sum() / l, fus.sum() / l
    num = saa = sff = 0.0
    m1a = m2a = m1f = m2f = 0.0
    h_a = 0.0
    run_a = run_f = 0.0
    for i in range(l):
        run_a += src[i]
        run_f += fus[i]
        cdf_a[i], cdf_f[i] = run_a, run_f
        ta, tf = src[i] - mean_a, fus[i] - mean_f
        num += ta * tf
        saa += ta * ta
        sff += tf * tf
        idx = i + 1.0
        m2a += idx**2 * src[i]
        m1a += idx * src[i]
        m2f += idx**2 * fus[i]
        m1f += idx * fus[i]
        # -p log2 p per cell; the logs are reused for the staircase cells below.
        log_a[i] = np.log2(src[i]) if src[i] > 0 else 0.0
        h_a -= src[i] * log_a[i]
    c = 0.0 if num == 0 else num / np.sqrt(saa * sff)
    sd_a = np.sqrt(max(m2a - m1a**2, 0.0))
    sd_f = np.sqrt(max(m2f - m1f**2, 0.0))
    upper = c >= 0

    # Breakpoints on [0, 1] of the coupling: t -> (F^-1(t), A^-1(t)) for the upper bound,
    # (F^-1(t), A^-1(1 - t)) for the lower one, whose source breakpoints are 1 - A_{L-1}, ..., 1.
    for j in range(l):
        b[j] = cdf_a[j] if upper else (1.0 - cdf_a[l - 2 - j] if j < l - 1 else 1.0)
    # Staircase segments: those ending at F_i (r < L) and at B_j (r >= L). Merge the sorted F
    # and B: the other sequence's points before each point (F first on ties), counted without
    # branches (L is small; a two-pointer merge mispredicts at almost every step).
    for i in range(l):
        below = 0
        for j in range(l):
            below += b[j] < cdf_f[i]
        start = max(cdf_f[i - 1] if i > 0 else 0.0, b[below - 1] if below > 0 else 0.0)
        length[i] = max(cdf_f[i] - start, 0.0)
        f_cell[i] = i
        b_count[i] = below
        f_above[i] = l - i
    for j in range(l):
        upto = 0
        for i in range(l):
            upto += cdf_f[i] <= b[j]
        start = max(b[j - 1] if j > 0 else 0.0, cdf_f[upto - 1] if upto > 0 else 0.0)
        length[l + j] = max(b[j] - start, 0.0)
        f_cell[l + j] = min(upto, l - 1)
        b_count[l + j] = j
        f_above[l + j] = l - upto

    # Covariance of the bound: sum_ij min(F_i, A_j) (upper) or max(F_i + A_j - 1, 0) (lower)
    # = integral of #{F_i > t} #{A_j > t} (or #{j : 1 - A_j < t}) dt, minus sum_ij F_i A_j.
    cov = 0.0
    sum_cdf_a = sum_cdf_f = 0.0
    for r in range(2 * l):
        a_count = l - b_count[r] if upper else min(b_count[r] + 1, l)
        cov += length[r] * f_above[r] * a_count
    for i in range(l):
        sum_cdf_a += cdf_a[i]
        sum_cdf_f += cdf_f[i]
    cov -= sum_cdf_f * sum_cdf_a
    degenerate = sd_a == 0 or sd_f == 0 or (upper and c == 0)
    ratio = 0.0
    if not degenerate:
        ratio = c / (cov / (sd_f * sd_a))
        if not np.isfinite(ratio):
            ratio = 0.0

    # Joint entropy: product part over all cells in closed form, then the staircase corrections
    # (none when the coupling has no weight).
    k = 1.0 - ratio
    log_k = np.log2(abs(k)) if k != 0 else 0.0
    joint = 0.0 if k == 0 else -k * (log_k - h_f - h_a)
    correction = 0.0
    if ratio != 0:
        for r in range(2 * l):
            if length[r] > 0:
                b_cell = min(b_count[r], l - 1)
                a_cell = b_cell if upper else l - 1 - b_cell
                p_f, p_a = fus[f_cell[r]], src[a_cell]
                cell = k * p_f * p_a
                # -cell log2 |cell| from the logs of its factors.
                own = 0.0 if cell == 0 else -cell * (log_k + log_f[f_cell[r]] + log_a[a_cell])
                correction += _neg_xlog2x(cell + ratio * length[r]) - own
    mi = h_a + h_f - (joint + correction)
    return 0.0 if mi == 0 else 2 * mi / (h_a + h_f)


@numba.njit(cache=True)
def pairwise_fmi(src: np.ndarray, fus: np.ndarray) -> np.ndarray:
    """FMI of window pairs: src, fus (L, N) pdfs -> (N,) values."""
    l, n = src.shape
    out = np.empty(n)
    log_f = np.empty(l)
    scratch, counts = np.empty((5, 2 * l)), np.empty((3, 2 * l), np.int64)
    for k in range(n):
        fus_k = np.ascontiguousarray(fus[:, k])
        h_f = fused_terms(fus_k, log_f)
        out[k] = window_fmi(np.ascontiguousarray(src[:, k]), fus_k, log_f, h_f, scratch, counts)
    return out


# One FMI map at a time: each call already uses every core, and numba's fallback threading layer
# (workqueue) aborts the process when two threads enter a parallel kernel at once.
_PARALLEL_KERNEL = threading.Lock()


def window_fmi_map(feats: np.ndarray, fused: np.ndarray, w: int, windows: np.ndarray) -> np.ndarray:
    """`fmi_lanes.map_window_fmi`, one call at a time across threads."""
    with _PARALLEL_KERNEL:
        return map_window_fmi(feats, fused, w, windows)
