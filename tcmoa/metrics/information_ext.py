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
from tcmoa.metrics.fmi_window import map_window_fmi, pairwise_fmi, window_fmi_map, window_pdfs  # noqa: F401 (re-exported)
from tcmoa.metrics.information import joint_histograms, minmax_levels
from tcmoa.metrics.prepare import once_per_plane, planes
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


def fmi_map_mean(feat_a: np.ndarray, feat_b: np.ndarray, feat_f: np.ndarray, w: int = 3) -> float:
    """fmi.m: mean over the w x w windows of (FMI(a, f) + FMI(b, f)) / 2 for (H, W) feature maps.

    Binary feature maps (edges) have at most 2^(w*w) window patterns, so each distinct pair of
    patterns is evaluated once.
    """
    feats = np.stack([feat_a, feat_b])
    # A pair of binary windows is coded in 2 w^2 bits of an int64.
    binary = w * w <= 31 and all(np.isin(m, (0.0, 1.0)).all() for m in (feat_a, feat_b, feat_f))
    if not binary:
        # Both sources in one pass: the fused window's pdf is shared.
        every = np.arange((feat_f.shape[0] - w + 1) * (feat_f.shape[1] - w + 1))
        return float(window_fmi_map(feats, feat_f, w, every).sum(axis=0).mean() / 2)
    bits = (1 << np.arange(w * w))[:, None]
    code_f = (window_vectors(feat_f, w) * bits).sum(axis=0).astype(np.int64)
    total = np.zeros(code_f.size)
    for m, feat in enumerate((feat_a, feat_b)):
        codes = ((window_vectors(feat, w) * bits).sum(axis=0).astype(np.int64) << (w * w)) | code_f
        _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        total += window_fmi_map(feats[m : m + 1], feat_f, w, first)[0, inverse]
    return float(total.mean() / 2)


def _fmi(fused, a, b, conv: Convention, metric: str, feature: str) -> float:
    w = conv.param(metric, "window", 3)
    features = once_per_plane(lambda img: fmi_features((img,), feature)[0])
    values = []
    for f, x, y in zip(planes(fused), planes(a), planes(b)):
        values.append(fmi_map_mean(features(x), features(y), features(f), w))
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
