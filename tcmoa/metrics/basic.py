"""Statistics of the fused image and pixel differences to the sources: EN, SD, SF, AG, EI, CE, PSNR, RMSE.

Each is computed per plane (colour channel under the 'average' colour handling) and averaged,
as the VIFB/MEFB toolboxes do; the formulas follow their MATLAB code where a preset names it.
"""
from __future__ import annotations

import numpy as np

from tcmoa.metrics.gradient import sobel
from tcmoa.metrics.prepare import planes
from tcmoa.metrics.registry import Convention, register

LEVELS = 256


def histograms(stack: np.ndarray) -> np.ndarray:
    """(K, H, W) levels -> (K, 256) probabilities; values are floored to integer levels 0..255."""
    k = stack.shape[0]
    idx = np.clip(np.floor(stack), 0, LEVELS - 1).astype(np.int64).reshape(k, -1)
    idx += (np.arange(k) * LEVELS)[:, None]
    counts = np.bincount(idx.ravel(), minlength=k * LEVELS).reshape(k, LEVELS)
    return counts / idx.shape[1]


def entropy_of(p: np.ndarray, log) -> np.ndarray:
    """Shannon entropy along the last axis, 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=-1)


@register(
    "EN",
    higher_is_better=True,
    description="Entropy of the fused image's 256-level histogram (bits unless the preset says otherwise)",
    aliases=("Entropy",),
)
def entropy(fused, a, b, conv: Convention) -> float:
    return float(entropy_of(histograms(planes(fused)), conv.log("EN")).mean())


def _cross_entropy(p_src: np.ndarray, p_fused: np.ndarray, log) -> np.ndarray:
    # The toolboxes skip the bins where either histogram is empty (no infinite terms).
    both = (p_src > 0) & (p_fused > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(both, p_src / np.where(both, p_fused, 1.0), 1.0)
    return np.where(both, p_src * log(ratio), 0.0).sum(axis=-1)


@register(
    "CE",
    higher_is_better=False,
    description="Cross entropy of each source's histogram relative to the fused one, averaged over the sources",
    aliases=("Cross_entropy",),
)
def cross_entropy(fused, a, b, conv: Convention) -> float:
    log = conv.log("CE")
    pf = histograms(planes(fused))
    ce = (_cross_entropy(histograms(planes(a)), pf, log) + _cross_entropy(histograms(planes(b)), pf, log)) / 2
    return float(ce.mean())


@register(
    "SD",
    higher_is_better=True,
    description="Standard deviation of the fused image (population form); the VIFB table calls it Variance",
    aliases=("Variance", "STD"),
)
def standard_deviation(fused, a, b, conv: Convention) -> float:
    return float(planes(fused).std(axis=(1, 2)).mean())


def _spatial_frequency(stack: np.ndarray) -> np.ndarray:
    m, n = stack.shape[1:]
    rf = (np.diff(stack, axis=2) ** 2).sum(axis=(1, 2)) / (m * n)
    cf = (np.diff(stack, axis=1) ** 2).sum(axis=(1, 2)) / (m * n)
    return np.sqrt(rf + cf)


@register(
    "SF",
    higher_is_better=True,
    description="Spatial frequency sqrt(RF^2 + CF^2) of the fused image (row and column first differences)",
    aliases=("Spatial_frequency",),
)
def spatial_frequency(fused, a, b, conv: Convention) -> float:
    stack = planes(fused)
    if conv.param("SF", "layout", "per_channel") == "concat" and stack.shape[0] > 1:
        # VIFB: `[m,n] = size(fused)` of an RGB array gives n = 3 * width, so the loops run over the
        # channels laid side by side (including the two seams between them).
        k, h, w = stack.shape
        stack = stack.transpose(1, 0, 2).reshape(1, h, k * w)
    return float(_spatial_frequency(stack).mean())


@register(
    "AG",
    higher_is_better=True,
    description="Average gradient: mean of sqrt((dx^2 + dy^2) / 2) with central differences, over (M-1)(N-1)",
    aliases=("Avg_gradient",),
)
def average_gradient(fused, a, b, conv: Convention) -> float:
    stack = planes(fused)
    _, r, c = stack.shape
    # np.gradient = MATLAB gradient(): central differences inside, one-sided at the borders.
    dy, dx = np.gradient(stack, axis=(1, 2))
    s = np.sqrt((dx**2 + dy**2) / 2).sum(axis=(1, 2)) / ((r - 1) * (c - 1))
    return float(s.mean())


@register(
    "EI",
    higher_is_better=True,
    description="Edge intensity: mean Sobel gradient magnitude of the fused image (replicated borders)",
    aliases=("Edge_intensity",),
)
def edge_intensity(fused, a, b, conv: Convention) -> float:
    # imfilter(fused, fspecial('sobel'), 'replicate') and its transpose: edge replication = 'nearest'.
    gx, gy = sobel(planes(fused), mode="nearest")
    return float(np.sqrt(gx**2 + gy**2).mean())


def _benchmark_mse(src: np.ndarray, fused: np.ndarray) -> np.ndarray:
    # The toolboxes' "mse": sqrt(sum((a - b)^2)) / (M N), per plane.
    m, n = fused.shape[1:]
    return np.sqrt(((src - fused) ** 2).sum(axis=(1, 2))) / (m * n)


def _mse(src: np.ndarray, fused: np.ndarray) -> np.ndarray:
    return ((src - fused) ** 2).mean(axis=(1, 2))


@register(
    "PSNR",
    higher_is_better=True,
    description="Peak signal-to-noise ratio of the fused image to the sources (peak 255, the two MSEs averaged)",
    aliases=("Psnr",),
)
def psnr(fused, a, b, conv: Convention) -> float:
    f, x, y = planes(fused), planes(a), planes(b)
    if conv.param("PSNR", "psnr") == "benchmark":
        mse = (_benchmark_mse(x, f) + _benchmark_mse(y, f)) / 2
    else:
        mse = (_mse(x, f) + _mse(y, f)) / 2
    with np.errstate(divide="ignore"):
        values = 10 * np.log10(255.0**2 / mse)
    return float(values.mean())


@register(
    "RMSE",
    higher_is_better=False,
    description="Root mean squared error between the fused image and each source, averaged over the sources",
    aliases=("Rmse",),
)
def rmse(fused, a, b, conv: Convention) -> float:
    f, x, y = planes(fused), planes(a), planes(b)
    if conv.param("RMSE", "psnr") == "benchmark":
        # The toolboxes report their "mse" (see PSNR) under the name RMSE.
        values = (_benchmark_mse(x, f) + _benchmark_mse(y, f)) / 2
    else:
        values = (np.sqrt(_mse(x, f)) + np.sqrt(_mse(y, f))) / 2
    return float(values.mean())
