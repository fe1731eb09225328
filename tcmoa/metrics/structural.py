"""Structural similarity of the fused image to each source (Wang et al. 2004)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from tcmoa.metrics.prepare import planes, reduce_sources
from tcmoa.metrics.registry import Convention, register


def gaussian_window_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The separable factor of fspecial('gaussian', size, sigma), normalised to sum 1."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(stack: np.ndarray, window: np.ndarray) -> np.ndarray:
    """filter2(w' * w, x, 'valid') for a separable window w (border mode irrelevant once cropped)."""
    m = len(window) // 2
    out = ndimage.correlate1d(stack, window, axis=2, mode="nearest")[:, :, m:-m]
    return ndimage.correlate1d(out, window, axis=1, mode="nearest")[:, m:-m]


def ssim_against(
    sources: list[np.ndarray], y: np.ndarray, peak: float = 255.0, size: int = 11, sigma: float = 1.5
) -> list[np.ndarray]:
    """Mean SSIM per plane of each (K, H, W) source against y, over the 'valid' windows.

    Wang et al.'s ssim_index (Gaussian window, K1 = 0.01, K2 = 0.03); y's local statistics are
    computed once for all sources.
    """
    if min(y.shape[1:]) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size} pixels, got {y.shape[1:]}")
    w = gaussian_window_1d(size, sigma)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_y = _filter_valid(y, w)
    syy = _filter_valid(y * y, w) - mu_y**2
    out = []
    for x in sources:
        mu_x = _filter_valid(x, w)
        sxx = _filter_valid(x * x, w) - mu_x**2
        sxy = _filter_valid(x * y, w) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
        out.append(ssim_map.mean(axis=(1, 2)))
    return out


@register(
    "SSIM",
    higher_is_better=True,
    description="SSIM(A,F) and SSIM(B,F) (11x11 Gaussian window, sigma 1.5), summed (VIFB) or averaged",
    aliases=("Ssim",),
)
def structural_similarity(fused, a, b, conv: Convention) -> float:
    s_a, s_b = ssim_against([planes(a), planes(b)], planes(fused))
    return float(reduce_sources(s_a, s_b, conv.param("SSIM", "source_reduce")).mean())
