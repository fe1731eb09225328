"""Structure-based fusion metrics beyond SSIM: MEF-SSIM, MS-SSIM, Q_Y, Q_C, Piella's Q_S/Q_W/Q_E, CC, SCD.

The formulas follow the MATLAB code the MEFB toolbox ships (Ma et al.'s mef_ms_ssim.m, Z. Liu's
metricYang.m / metricCvejic.m / metricPeilla.m); every sliding-window statistic is a separable
filter over the whole image, never a loop over pixels. MATLAB's `filter2(w, x, 'valid')` becomes
`filter2(x, w1d, 'valid')` here (correlation, the window's margin cropped).

Note for the metric framework (M1): MEF-SSIM is a luminance metric in both the paper and MEFB
(`rgb2gray` of the uint8 images, rounded), so it converts RGB planes itself whatever the colour
handling; the other metrics here follow `Convention.color` like the VIFB metrics.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from tcmoa.metrics.prepare import planes, reduce_sources, rgb_to_grey
from tcmoa.metrics.registry import Convention, register
from tcmoa.metrics.separable import correlate_separable
from tcmoa.metrics.shared import array_key, shared


@lru_cache(maxsize=None)
def gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """Separable factor of MATLAB's fspecial('gaussian', size, sigma) (normalised to sum 1)."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def filter2(stack: np.ndarray, w: np.ndarray, shape: str = "valid") -> np.ndarray:
    """MATLAB filter2 with the separable window outer(w, w) over the last two axes.

    'valid' keeps the positions where the window lies inside the image; 'same' pads with zeros.
    """
    out = correlate_separable(stack, w)  # = ndimage.correlate1d on axis -2, then -1, mode constant
    if shape == "same":
        return out
    lo = (len(w) - 1) // 2
    hi = len(w) - 1 - lo
    return out[..., lo : out.shape[-2] - hi, lo : out.shape[-1] - hi]


def box_valid(stack: np.ndarray, size: int) -> np.ndarray:
    """Mean over every size x size window that lies inside the image (filter2(ones/size^2, x, 'valid'))."""
    out = ndimage.uniform_filter1d(stack, size, axis=-2, mode="constant")
    out = ndimage.uniform_filter1d(out, size, axis=-1, mode="constant")
    lo = size // 2
    hi = size - 1 - lo
    return out[..., lo : out.shape[-2] - hi, lo : out.shape[-1] - hi]


def halve(stack: np.ndarray) -> np.ndarray:
    """imfilter(x, ones(2)/4, 'symmetric', 'same') then x(1:2:end, 1:2:end): 2x2 block means."""
    h, w = stack.shape[-2:]
    padded = np.pad(stack, [(0, 0)] * (stack.ndim - 2) + [(0, h % 2), (0, w % 2)], mode="edge")
    return 0.25 * (
        padded[..., 0::2, 0::2] + padded[..., 1::2, 0::2] + padded[..., 0::2, 1::2] + padded[..., 1::2, 1::2]
    )


def luminance(x: np.ndarray, quantize: bool) -> np.ndarray:
    """(H, W) stays; (H, W, 3) -> MATLAB rgb2gray (rounded when the images are uint8 levels)."""
    return x if x.ndim == 2 else rgb_to_grey(x, quantize)[:, :, 0]


# --------------------------------------------------------------------------------------------
# MEF-SSIM (Ma, Zeng & Wang 2015), the multi-scale evaluation model of mef_ms_ssim.m


def _mef_ssim_scale(seq: np.ndarray, fused: np.ndarray, k: float = 0.03, size: int = 11) -> float:
    """mef_ssim.m at one scale: seq (K, H, W) sources, fused (H, W); mean of the quality map.

    The desired structure patch is a linear combination of the mean-removed source patches, so
    its Gaussian-window statistics follow from box/Gaussian-filtered products of the sources.
    """
    n = size * size
    # Shifting by a constant changes no (co)variance and keeps the filtered products well conditioned.
    shift = 0.5 * (seq.mean() + fused.mean())
    seq = seq - shift
    fused = fused - shift
    nsrc = seq.shape[0]
    pairs = [(i, j) for i in range(nsrc) for j in range(i, nsrc)]
    prods = np.stack([seq[i] * seq[j] for i, j in pairs])

    # Box-window statistics: patch means, signal strengths and the structure consistency.
    mu = box_valid(seq, size)
    box_cov = box_valid(prods, size) - np.stack([mu[i] * mu[j] for i, j in pairs])
    cov = np.empty((nsrc, nsrc) + mu.shape[1:])
    for p, (i, j) in enumerate(pairs):
        cov[i, j] = cov[j, i] = box_cov[p]
    var = np.maximum(np.stack([cov[i, i] for i in range(nsrc)]), 0.0)
    norm_each = np.sqrt(n * var)
    ed = norm_each + 0.001
    eps = np.finfo(float).eps
    norm_sum = np.sqrt(np.maximum(n * cov.sum(axis=(0, 1)), 0.0))
    r = (norm_sum + eps) / (norm_each.sum(axis=0) + eps)
    r = np.where(r > 1, 1 - eps, r)
    r = np.where(r < 0, eps, r)
    p = np.minimum(np.tan(np.pi / 2 * r), 10.0)
    weights = (ed / size) ** p + eps
    weights = weights / weights.sum(axis=0)
    max_ed = ed.max(axis=0)

    # Desired patch r = sum_k a_k (x_k - mu_k), scaled to the largest signal strength.
    c = weights / ed
    r_norm = np.sqrt(np.maximum(n * np.einsum("kij,klij,lij->ij", c, cov, c), 0.0))
    a = c * np.where(r_norm > 0, max_ed / np.where(r_norm > 0, r_norm, 1.0), 1.0)

    w = gaussian_1d(size, 1.5)
    g_mu = filter2(seq, w)
    g_f = filter2(fused, w)
    g_cov = filter2(prods, w) - np.stack([g_mu[i] * g_mu[j] for i, j in pairs])
    g_cf = filter2(seq * fused, w) - g_mu * g_f
    sigma_f = filter2(fused * fused, w) - g_f**2
    sigma_r = np.zeros_like(sigma_f)
    for p_idx, (i, j) in enumerate(pairs):
        sigma_r += (1 if i == j else 2) * a[i] * a[j] * g_cov[p_idx]
    sigma_rf = (a * g_cf).sum(axis=0)
    c2 = (k * 255) ** 2
    q = (2 * sigma_rf + c2) / (sigma_r + sigma_f + c2)
    return float(q.mean())


def mef_ssim_ms(seq: np.ndarray, fused: np.ndarray, levels: int = 3) -> float:
    """mef_ms_ssim.m: product of the per-scale scores to the weights [0.0448 0.2856 0.3001]/sum."""
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:levels])
    weights = weights / weights.sum()
    if min(fused.shape) / 2 ** (levels - 1) < 11:
        raise ValueError(f"MEF-SSIM needs images of at least {11 * 2 ** (levels - 1)} pixels a side")
    scores = []
    for level in range(levels):
        if level:
            seq, fused = halve(seq), halve(fused)
        scores.append(_mef_ssim_scale(seq, fused))
    return float(np.prod(np.power(np.array(scores), weights)))


@register(
    "MEF_SSIM",
    higher_is_better=True,
    description="MEF-SSIM (Ma et al. 2015): multi-scale structural fidelity to the desired patch built from "
    "all exposures, on luminance (0..1)",
    aliases=("MEF-SSIM", "MEFSSIM"),
)
def mef_ssim(fused, a, b, conv: Convention) -> float:
    quantize = conv.param("MEF_SSIM", "quantize")
    seq = np.stack([luminance(a, quantize), luminance(b, quantize)])
    return mef_ssim_ms(seq, luminance(fused, quantize))


# --------------------------------------------------------------------------------------------
# Windowed SSIM maps shared by Q_Y, Q_C and Piella's indices


class LocalMoments:
    """Gaussian-window means, variances and covariances of named (K, H, W) stacks over the
    'valid' windows, each filtered once however many SSIM maps use it.

    residue: MATLAB's filter2 leaves a (co)variance of about residue * mu^2 in a constant window
    instead of 0 (the window weights do not sum to exactly 1 in floating point). With Yang's
    constants C = 2e-16 that residue decides the SSIM of two constant windows, to
    ~(2 mu_x mu_y / (mu_x^2 + mu_y^2))^2, and the MEFB values contain it; adding residue * mu^2
    reproduces it without touching any real window (whose variance is >= ~1e-4 for 8-bit images).
    """

    def __init__(self, stacks: dict[str, np.ndarray], size: int, sigma: float, residue: float = 0.0):
        self.stacks = stacks
        self.w = gaussian_1d(size, sigma)
        self.residue = residue
        self.mu = {k: filter2(v, self.w) for k, v in stacks.items()}
        self._cov: dict[tuple[str, str], np.ndarray] = {}

    def cov(self, p: str, q: str) -> np.ndarray:
        key = (p, q) if (p, q) in self._cov or (q, p) not in self._cov else (q, p)
        if key not in self._cov:
            mp, mq = self.mu[p], self.mu[q]
            raw = filter2(self.stacks[p] * self.stacks[q], self.w) - mp * mq
            self._cov[key] = raw + self.residue * mp * mq
        return self._cov[key]

    def ssim(self, p: str, q: str, c1: float, c2: float) -> np.ndarray:
        mp, mq = self.mu[p], self.mu[q]
        with np.errstate(divide="ignore", invalid="ignore"):
            return ((2 * mp * mq + c1) * (2 * self.cov(p, q) + c2)) / (
                (mp**2 + mq**2 + c1) * (self.cov(p, p) + self.cov(q, q) + c2)
            )


# Z. Liu's ssim_yang: a 7x7 Gaussian window and near-zero stabilising constants.
_YANG_WINDOW = dict(size=7, sigma=1.5, residue=1e-12)
_YANG_C = (2e-16, 2e-16)
# Wang's ssim_index defaults (11x11, sigma 1.5, K = [0.01 0.03], L = 255), used by Piella's indices.
_WANG_WINDOW = dict(size=11, sigma=1.5)
_WANG_C = ((0.01 * 255) ** 2, (0.03 * 255) ** 2)


def _nanmean_planes(maps: np.ndarray) -> float:
    """Mean over the finite entries of each plane, then over the planes (A(~isnan(A)))."""
    values = [m[~np.isnan(m)].mean() for m in maps]
    return float(np.mean(values))


def _yang_moments(fused, a, b) -> LocalMoments:
    """The 7x7 local moments Q_Y and Q_C share (once per evaluate() call)."""
    return shared(("yang", *array_key(fused, a, b)),
                  lambda: LocalMoments({"x": planes(a), "y": planes(b), "f": planes(fused)}, **_YANG_WINDOW))


@register(
    "Qy",
    higher_is_better=True,
    description="Yang et al. (2008) SSIM-based metric Q_Y: weighted SSIM to the sources where they agree, "
    "the better one elsewhere (0..1)",
    aliases=("Q_Y", "QY"),
)
def qy(fused, a, b, conv: Convention) -> float:
    m = _yang_moments(fused, a, b)
    ssim_xy, ssim_xf, ssim_yf = (m.ssim(p, q, *_YANG_C) for p, q in (("x", "y"), ("x", "f"), ("y", "f")))
    var_x, var_y = m.cov("x", "x"), m.cov("y", "y")
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = var_x / (var_x + var_y)
        weighted = lam * ssim_xf + (1 - lam) * ssim_yf
    best = np.maximum(ssim_xf, ssim_yf)
    # MATLAB multiplies each branch by its mask, so a NaN in either branch survives and is dropped.
    q = np.where(ssim_xy >= 0.75, weighted, best)
    return _nanmean_planes(np.where(np.isnan(weighted) | np.isnan(best), np.nan, q))


@register(
    "Qc",
    higher_is_better=True,
    description="Cvejic et al. (2006) metric Q_C: SSIM to each source weighted by the local covariances with "
    "the fused image (0..1)",
    aliases=("Q_C", "QC"),
)
def qc(fused, a, b, conv: Convention) -> float:
    m = _yang_moments(fused, a, b)
    ssim_xf, ssim_yf = m.ssim("x", "f", *_YANG_C), m.ssim("y", "f", *_YANG_C)
    cov_xf, cov_yf = m.cov("x", "f"), m.cov("y", "f")
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = cov_xf / (cov_xf + cov_yf)
        q = sim * ssim_xf + (1 - sim) * ssim_yf
    q = np.where(sim < 0, 0.0, np.where(sim > 1, 1.0, q))
    return _nanmean_planes(q)


PREWITT_X = np.array([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])


def _prewitt_magnitude(stack: np.ndarray) -> np.ndarray:
    """filter2 with [1 0 -1] x 3 and its transpose ('same', zero padding): gradient magnitude."""
    gx = ndimage.correlate(stack, PREWITT_X[None], mode="constant")
    gy = ndimage.correlate(stack, PREWITT_X.T[None], mode="constant")
    return np.sqrt(gx * gx + gy * gy)


def _piella(x: np.ndarray, y: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """metricPeilla.m per plane: (Q, Q_W) from local SSIMs weighted by the sources' local variances."""
    m = LocalMoments({"x": x, "y": y, "f": f}, **_WANG_WINDOW)
    var_x, var_y = m.cov("x", "x"), m.cov("y", "y")
    both_zero = (var_x + var_y) == 0
    var_x = var_x + 0.5 * both_zero
    var_y = var_y + 0.5 * both_zero
    lam = var_x / (var_x + var_y)
    q_map = lam * m.ssim("f", "x", *_WANG_C) + (1 - lam) * m.ssim("f", "y", *_WANG_C)
    saliency = np.maximum(var_x, var_y)
    cw = saliency / saliency.sum(axis=(1, 2), keepdims=True)
    return q_map.mean(axis=(1, 2)), (cw * q_map).sum(axis=(1, 2))


def _piella_of(fused, a, b, edges: bool) -> tuple[np.ndarray, np.ndarray]:
    """`_piella` of the planes or of their Prewitt edge images (once per evaluate() call)."""
    def compute():
        x, y, f = planes(a), planes(b), planes(fused)
        if edges:
            x, y, f = _prewitt_magnitude(x), _prewitt_magnitude(y), _prewitt_magnitude(f)
        return _piella(x, y, f)

    return shared(("piella", edges, *array_key(fused, a, b)), compute)


@register(
    "Qs",
    higher_is_better=True,
    description="Piella & Heijmans (2003) fusion quality index Q_S: local SSIM to each source weighted by "
    "relative variance (0..1)",
    aliases=("Q_S", "Q0_piella", "Q_piella"),
)
def piella_qs(fused, a, b, conv: Convention) -> float:
    return float(_piella_of(fused, a, b, edges=False)[0].mean())


@register(
    "Qw",
    higher_is_better=True,
    description="Piella's weighted fusion quality index Q_W (saliency-weighted); MEFB computes it on the "
    "Prewitt edge images (0..1)",
    aliases=("Q_W", "QW"),
)
def piella_qw(fused, a, b, conv: Convention) -> float:
    # metricPeilla.m sw = 3 as MEFB calls it ('edges'): Q_E with alpha = 1 and without the
    # intensity factor, i.e. Q_W of the edge images.
    edges = conv.param("Qw", "domain", "intensity") == "edges"
    return float(_piella_of(fused, a, b, edges)[1].mean())


@register(
    "Qe",
    higher_is_better=True,
    description="Piella's edge-dependent fusion quality index Q_E = Q_W(images) * Q_W(edge images)^alpha (0..1)",
    aliases=("Q_E", "QE"),
)
def piella_qe(fused, a, b, conv: Convention) -> float:
    alpha = conv.param("Qe", "alpha", 1.0)
    q_w = _piella_of(fused, a, b, edges=False)[1]
    q_w_edges = _piella_of(fused, a, b, edges=True)[1]
    return float((q_w * np.power(q_w_edges, alpha)).mean())


# --------------------------------------------------------------------------------------------
# Correlation metrics


def _corr(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pearson correlation per plane of (K, H, W) stacks (0 where either plane is constant)."""
    du = u - u.mean(axis=(1, 2), keepdims=True)
    dv = v - v.mean(axis=(1, 2), keepdims=True)
    den = np.sqrt((du * du).sum(axis=(1, 2)) * (dv * dv).sum(axis=(1, 2)))
    return np.where(den > 0, (du * dv).sum(axis=(1, 2)) / np.where(den > 0, den, 1.0), 0.0)


@register(
    "CC",
    higher_is_better=True,
    description="Correlation coefficient between the fused image and each source, averaged (-1..1)",
    aliases=("Corr",),
)
def correlation_coefficient(fused, a, b, conv: Convention) -> float:
    f = planes(fused)
    return float(((_corr(planes(a), f) + _corr(planes(b), f)) / 2).mean())


@register(
    "SCD",
    higher_is_better=True,
    description="Sum of the correlations of differences (Aslantas & Bendes 2015): r(F-B, A) + r(F-A, B) (-2..2)",
)
def scd(fused, a, b, conv: Convention) -> float:
    x, y, f = planes(a), planes(b), planes(fused)
    return float((_corr(f - y, x) + _corr(f - x, y)).mean())


# --------------------------------------------------------------------------------------------
# MS-SSIM (Wang, Simoncelli & Bovik 2003), of the fused image to each source


def ms_ssim(x: np.ndarray, y: np.ndarray, levels: int = 5) -> np.ndarray:
    """msssim.m per plane of (K, H, W) stacks: contrast-structure terms at the finer scales and the
    full SSIM at the coarsest, 2x2-mean downsampling, weights [0.0448 0.2856 0.3001 0.2363 0.1333]."""
    weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])[:levels]
    if min(x.shape[1:]) / 2 ** (levels - 1) < 11:
        raise ValueError(f"MS-SSIM needs images of at least {11 * 2 ** (levels - 1)} pixels a side")
    w = gaussian_1d(11, 1.5)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    result = np.ones(x.shape[0])
    for level in range(levels):
        if level:
            x, y = halve(x), halve(y)
        mu_x, mu_y = filter2(x, w), filter2(y, w)
        var_x = filter2(x * x, w) - mu_x**2
        var_y = filter2(y * y, w) - mu_y**2
        cov = filter2(x * y, w) - mu_x * mu_y
        cs = ((2 * cov + c2) / (var_x + var_y + c2)).mean(axis=(1, 2))
        if level == levels - 1:
            lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
            cs = (lum * (2 * cov + c2) / (var_x + var_y + c2)).mean(axis=(1, 2))
        result *= np.sign(cs) * np.abs(cs) ** weights[level]
    return result


@register(
    "MS_SSIM",
    higher_is_better=True,
    description="Multi-scale SSIM (Wang et al. 2003, 5 scales) of the fused image to each source, averaged or "
    "summed over the sources",
    aliases=("MS-SSIM", "MSSSIM"),
)
def multiscale_ssim(fused, a, b, conv: Convention) -> float:
    f = planes(fused)
    values = reduce_sources(ms_ssim(planes(a), f), ms_ssim(planes(b), f), conv.param("MS_SSIM", "source_reduce"))
    return float(values.mean())
