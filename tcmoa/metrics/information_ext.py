"""Information-theoretic fusion metrics: NMI (Hossny), Q_NCIE (Wang), Q_TE (Tsallis, Cvejic) and FMI.

The MEFB toolbox takes NMI, Q_NCIE and Q_TE from Z. Liu's imageFusionMetrics (metricMI.m,
metricWang.m): each image is first min-max normalised to rounded 0..255 levels (`normalize1.m`,
the convention's `mi_minmax`), and the 256x256 joint histogram gives the probabilities.
Liu's `tsallis.m` pairs the joint probability p(x, f) with the marginals p_F(x) p_X(f) (it takes
`sum(h)`, the column sums, as the marginal of the first image); MEFB's TE values contain that, so
the preset switch 'TE.marginals' chooses 'swapped' (the toolbox) or 'matched' (the textbook).

FMI (Haghighat & Razian's fast FMI, `fmi.m` as MEFB ships it) is the mean over 3x3 windows of the
normalised mutual information between the source's and the fused image's feature values, the
joint distribution built from the two marginals by Nelsen's method. The feature is 'edge' (MEFB's
FMI column: MATLAB's Sobel `edge`), 'none' (pixels), 'dct' or 'wavelet'; see `tcmoa.metrics.feature`.

Note for the metric framework (M1): these metrics read from `Convention.extra` 'TE.marginals'
('swapped' in vifb/mefb, 'matched' by default), 'TE.q' (1.85), 'FMI.feature' ('edge'),
'<FMI name>.window' (3) and the per-metric 'mi_minmax'.
"""
from __future__ import annotations

import numpy as np

from tcmoa.metrics.basic import LEVELS, entropy_of
from tcmoa.metrics.feature import fmi_features
from tcmoa.metrics.information import joint_histograms, minmax_levels
from tcmoa.metrics.prepare import planes
from tcmoa.metrics.registry import Convention, register


def _levels(stack: np.ndarray, conv: Convention, metric: str) -> np.ndarray:
    if conv.param(metric, "mi_minmax"):
        return minmax_levels(stack)
    return np.floor(stack)


def _mi_terms(pxf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entropies in bits: H(X), H(F), H(X, F) per plane."""
    log2 = np.log2
    k = pxf.shape[0]
    return (
        entropy_of(pxf.sum(axis=2), log2),
        entropy_of(pxf.sum(axis=1), log2),
        entropy_of(pxf.reshape(k, -1), log2),
    )


@register(
    "NMI",
    higher_is_better=True,
    description="Normalised mutual information (Hossny et al. 2008): 2[I(A;F)/(H(A)+H(F)) + I(B;F)/(H(B)+H(F))], 0..2",
    aliases=("Q_MI", "QMI"),
)
def nmi(fused, a, b, conv: Convention) -> float:
    f = _levels(planes(fused), conv, "NMI")
    total = 0.0
    for src in (a, b):
        h_x, h_f, h_xf = _mi_terms(joint_histograms(_levels(planes(src), conv, "NMI"), f))
        with np.errstate(divide="ignore", invalid="ignore"):
            total = total + 2 * (h_x + h_f - h_xf) / (h_x + h_f)
    return float(np.mean(total))


@register(
    "Qncie",
    higher_is_better=True,
    description="Nonlinear correlation information entropy Q_NCIE (Wang et al. 2008) of the sources and "
    "fused image (0..1)",
    aliases=("Q_NCIE", "NCIE"),
)
def qncie(fused, a, b, conv: Convention) -> float:
    f = _levels(planes(fused), conv, "Qncie")
    x = _levels(planes(a), conv, "Qncie")
    y = _levels(planes(b), conv, "Qncie")

    def ncc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        # Nonlinear correlation coefficient: mutual information with logarithms to base 256.
        h_u, h_v, h_uv = _mi_terms(joint_histograms(u, v))
        return (h_u + h_v - h_uv) / np.log2(LEVELS)

    r_xy, r_xf, r_yf = ncc(x, y), ncc(x, f), ncc(y, f)
    values = []
    for cxy, cxf, cyf in zip(r_xy, r_xf, r_yf):
        eig = np.linalg.eigvalsh(np.array([[1, cxy, cxf], [cxy, 1, cyf], [cxf, cyf, 1]]))
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(eig > 0, eig * np.log2(np.where(eig > 0, eig, 1.0) / 3) / 3, 0.0)
        values.append(1 + terms.sum() / np.log2(LEVELS))
    return float(np.mean(values))


def tsallis_mi(pxf: np.ndarray, q: float, marginals: str) -> np.ndarray:
    """Tsallis mutual information (1 - sum p(x,f)^q / (p(x) p(f))^(q-1)) / (1 - q) per plane."""
    p_x = pxf.sum(axis=2)  # marginal of the first image (rows)
    p_f = pxf.sum(axis=1)  # marginal of the second image (columns)
    if marginals == "matched":
        denom = p_x[:, :, None] * p_f[:, None, :]
    elif marginals == "swapped":
        # Liu's tsallis.m: buff = im1_marg(i) * im2_marg(j) with im1_marg = sum(h) (column sums).
        denom = p_f[:, :, None] * p_x[:, None, :]
    else:
        raise ValueError(f"TE.marginals must be 'matched' or 'swapped', got {marginals!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(denom != 0, pxf**q / np.where(denom != 0, denom, 1.0) ** (q - 1), 0.0)
    return (1 - terms.sum(axis=(1, 2))) / (1 - q)


@register(
    "TE",
    higher_is_better=True,
    description="Tsallis-entropy mutual information Q_TE (Cvejic et al. 2006, q = 1.85), summed over the sources",
    aliases=("Q_TE", "QTE"),
)
def tsallis_entropy(fused, a, b, conv: Convention) -> float:
    q = conv.param("TE", "q", 1.85)
    marginals = conv.param("TE", "marginals", "matched")
    f = _levels(planes(fused), conv, "TE")
    total = sum(tsallis_mi(joint_histograms(_levels(planes(src), conv, "TE"), f), q, marginals) for src in (a, b))
    return float(np.mean(total))


# --------------------------------------------------------------------------------------------
# FMI: windowed normalised mutual information of feature maps (Haghighat et al. 2011, 2014)


def window_vectors(feature: np.ndarray, w: int) -> np.ndarray:
    """All w x w windows of a (H, W) map as a (w*w, N) array, rows in MATLAB's column-major
    order within the window (aSub(:)) and windows in row-major order."""
    h, wd = feature.shape
    rows, cols = h - w + 1, wd - w + 1
    return np.stack(
        [feature[dy : dy + rows, dx : dx + cols].ravel() for dx in range(w) for dy in range(w)]
    )


def window_pdfs(vec: np.ndarray) -> np.ndarray:
    """fmi.m's marginal pdfs: each window min-max normalised (a constant one becomes all ones)
    and scaled to sum 1."""
    lo = vec.min(axis=0)
    hi = vec.max(axis=0)
    flat = hi == lo
    norm = np.where(flat, 1.0, (vec - lo) / np.where(flat, 1.0, hi - lo))
    return norm / norm.sum(axis=0)


def _neg_xlog2x(x: np.ndarray) -> np.ndarray:
    """-x log2 |x|, 0 at 0 (MATLAB's real(-x .* log2(x)) also for negative x)."""
    ax = np.abs(x)
    nz = ax > 0
    return np.where(nz, -x * np.log2(np.where(nz, ax, 1.0)), 0.0)


def pairwise_fmi(src: np.ndarray, fus: np.ndarray) -> np.ndarray:
    """FMI of window pairs, the inner loop of fmi.m: src, fus (L, N) pdfs -> (N,) values.

    The joint pdf is phi * U + (1 - phi) * f a^T with U the Frechet-bound coupling of the two
    marginals (upper bound for a non-negative correlation, lower bound otherwise). U is non-zero
    on at most 2L - 1 cells, a staircase read off the merged breakpoints of the two CDFs, so the
    joint entropy is the closed form of the product part plus corrections on those cells rather
    than a sum over all L^2 cells.
    """
    l, n = src.shape
    idx = np.arange(1, l + 1, dtype=float)[:, None]
    cdf_a = np.cumsum(src, axis=0)
    cdf_f = np.cumsum(fus, axis=0)
    ta = src - src.mean(axis=0)
    tf = fus - fus.mean(axis=0)
    num = (ta * tf).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(num == 0, 0.0, num / np.sqrt((ta * ta).sum(axis=0) * (tf * tf).sum(axis=0)))
    sd_a = np.sqrt(np.maximum((idx**2 * src).sum(axis=0) - (idx * src).sum(axis=0) ** 2, 0.0))
    sd_f = np.sqrt(np.maximum((idx**2 * fus).sum(axis=0) - (idx * fus).sum(axis=0) ** 2, 0.0))
    upper = c >= 0

    # Breakpoints on [0, 1] of the coupling: t -> (F^-1(t), A^-1(t)) for the upper bound,
    # (F^-1(t), A^-1(1 - t)) for the lower one, whose source breakpoints are 1 - A_{L-1}, ..., 1.
    lower_pts = np.concatenate([1.0 - cdf_a[-2::-1], np.ones((1, n))])
    b = np.where(upper, cdf_a, lower_pts)
    # Merge the sorted F and B: count the other sequence's points before each point (F first on ties).
    b_before_f = (b[None, :, :] < cdf_f[:, None, :]).sum(axis=1)  # (L, N): #B strictly below F_i
    f_upto_b = (cdf_f[None, :, :] <= b[:, None, :]).sum(axis=1)  # (L, N): #F at or below B_j
    zero = np.zeros((1, n))
    b_pad = np.concatenate([zero, b])
    f_pad = np.concatenate([zero, cdf_f])
    # Segment ending at F_i starts at max(F_{i-1}, largest B below F_i); cell (i, #B below).
    start_f = np.maximum(f_pad[:-1], np.take_along_axis(b_pad, b_before_f, axis=0))
    start_b = np.maximum(b_pad[:-1], np.take_along_axis(f_pad, f_upto_b, axis=0))
    length = np.maximum(np.concatenate([cdf_f - start_f, b - start_b]), 0.0)
    ar = np.broadcast_to(np.arange(l)[:, None], (l, n))
    f_cell = np.concatenate([ar, np.minimum(f_upto_b, l - 1)])
    b_count = np.concatenate([b_before_f, ar])  # #B points before the segment
    b_cell = np.minimum(b_count, l - 1)

    # Covariance of the bound: sum_ij min(F_i, A_j) (upper) or max(F_i + A_j - 1, 0) (lower)
    # = integral of #{F_i > t} #{A_j > t} (or #{j : 1 - A_j < t}) dt, minus sum_ij F_i A_j.
    f_above = l - np.concatenate([ar, f_upto_b])
    a_count = np.where(upper, l - b_count, np.minimum(b_count + 1, l))
    cov = (length * f_above * a_count).sum(axis=0) - cdf_f.sum(axis=0) * cdf_a.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = c / (cov / (sd_f * sd_a))
    degenerate = (sd_a == 0) | (sd_f == 0) | (upper & (c == 0))
    ratio = np.where(degenerate | ~np.isfinite(ratio), 0.0, ratio)

    # Joint entropy: product part over all cells in closed form, then the staircase corrections.
    a_cell = np.where(upper, b_cell, l - 1 - b_cell)
    h_a = _neg_xlog2x(src).sum(axis=0)
    h_f = _neg_xlog2x(fus).sum(axis=0)
    k = 1.0 - ratio
    log_k = np.log2(np.where(k != 0, np.abs(k), 1.0))
    joint = np.where(k != 0, -k * (log_k - h_f - h_a), 0.0)
    cell = k * np.take_along_axis(fus, f_cell, axis=0) * np.take_along_axis(src, a_cell, axis=0)
    correction = np.where(length > 0, _neg_xlog2x(cell + ratio * length) - _neg_xlog2x(cell), 0.0)
    mi = h_a + h_f - (joint + correction.sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mi == 0, 0.0, 2 * mi / (h_a + h_f))


def fmi_map_mean(feat_a: np.ndarray, feat_b: np.ndarray, feat_f: np.ndarray, w: int = 3) -> float:
    """fmi.m: mean over the w x w windows of (FMI(a, f) + FMI(b, f)) / 2 for (H, W) feature maps.

    Binary feature maps (edges) have at most 2^(w*w) window patterns, so each distinct pair of
    patterns is evaluated once.
    """
    raw_f = window_vectors(feat_f, w)
    # A pair of binary windows is coded in 2 w^2 bits of an int64.
    binary = w * w <= 31 and all(np.isin(m, (0.0, 1.0)).all() for m in (feat_a, feat_b, feat_f))
    total = np.zeros(raw_f.shape[1])
    for feat in (feat_a, feat_b):
        raw_s = window_vectors(feat, w)
        if binary:
            bits = (1 << np.arange(w * w))[:, None]
            code_s = (raw_s * bits).sum(axis=0).astype(np.int64)
            codes = (code_s << (w * w)) | (raw_f * bits).sum(axis=0).astype(np.int64)
            _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
            total += _fmi_windows(raw_s[:, first], raw_f[:, first])[inverse]
        else:
            total += _fmi_windows(raw_s, raw_f)
    return float(total.mean() / 2)


# Windows per batch: small enough for the (2L, batch) temporaries to stay in the CPU cache, which
# makes the many elementwise passes ~10x faster than over all windows at once.
_BATCH = 4096


def _fmi_windows(raw_s: np.ndarray, raw_f: np.ndarray) -> np.ndarray:
    out = np.empty(raw_s.shape[1])
    for i in range(0, raw_s.shape[1], _BATCH):
        s, f = raw_s[:, i : i + _BATCH], raw_f[:, i : i + _BATCH]
        same = np.all(s == f, axis=0)
        out[i : i + _BATCH] = np.where(same, 1.0, pairwise_fmi(window_pdfs(s), window_pdfs(f)))
    return out


def _fmi(fused, a, b, conv: Convention, metric: str, feature: str) -> float:
    w = conv.param(metric, "window", 3)
    values = []
    for f, x, y in zip(planes(fused), planes(a), planes(b)):
        fx, fy, ff = fmi_features((x, y, f), feature)
        values.append(fmi_map_mean(fx, fy, ff, w))
    return float(np.mean(values))


@register(
    "FMI",
    higher_is_better=True,
    description="Feature mutual information (Haghighat et al.), fast 3x3-window form on Sobel edge maps "
    "as in MEFB (0..1)",
    aliases=("FMI_edge",),
)
def fmi_edge(fused, a, b, conv: Convention) -> float:
    return _fmi(fused, a, b, conv, "FMI", conv.param("FMI", "feature", "edge"))


@register(
    "FMI_pixel",
    higher_is_better=True,
    description="Feature mutual information on the pixel values (fmi.m feature 'none') (0..1)",
    aliases=("FMI_none",),
)
def fmi_pixel(fused, a, b, conv: Convention) -> float:
    return _fmi(fused, a, b, conv, "FMI_pixel", "none")


@register(
    "FMI_dct",
    higher_is_better=True,
    description="Feature mutual information on the 2-D DCT coefficients (0..1)",
)
def fmi_dct(fused, a, b, conv: Convention) -> float:
    return _fmi(fused, a, b, conv, "FMI_dct", "dct")


@register(
    "FMI_w",
    higher_is_better=True,
    description="Feature mutual information on the discrete Meyer wavelet coefficients (0..1)",
    aliases=("FMI_wavelet",),
)
def fmi_wavelet(fused, a, b, conv: Convention) -> float:
    return _fmi(fused, a, b, conv, "FMI_w", "wavelet")
