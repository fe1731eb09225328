"""Burt & Adelson image pyramids on (N, H, W, C) float arrays, the prompt- or weight-driven blend
of two images over them, and the grey / colour helpers the pyramid fusers share (classical
baselines in `tcmoa.baselines`, prompt-guided reconstruction in `tcmoa.guided`)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# Burt & Adelson's generating kernel (a = 0.375).
_PYRAMID_KERNEL = np.array([0.0625, 0.25, 0.375, 0.25, 0.0625])

# BT.601 full-range RGB <-> YCbCr (JPEG).
_RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)


def _blur(x: np.ndarray) -> np.ndarray:
    """Separable 5-tap smoothing of (N, H, W, C) over H and W, symmetric borders."""
    x = ndimage.correlate1d(x, _PYRAMID_KERNEL, axis=1, mode="reflect")
    return ndimage.correlate1d(x, _PYRAMID_KERNEL, axis=2, mode="reflect")


def _downsample(x: np.ndarray) -> np.ndarray:
    return _blur(x)[:, ::2, ::2]


def _upsample(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Expand to (H, W) = shape: zero insertion and the 5-tap kernel (x4), on an edge-padded copy
    so that the borders are interpolated like the interior."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    up = np.zeros((n, 2 * (h + 2), 2 * (w + 2), c), dtype=x.dtype)
    up[:, ::2, ::2] = 4 * padded
    up = _blur(up)
    return up[:, 2 : 2 + shape[0], 2 : 2 + shape[1]]


def pyramid_levels(shape: tuple[int, int], wanted: int | None = None) -> int:
    """Number of pyramid levels for an (H, W) image: `wanted`, or as deep as the image allows."""
    deepest = max(1, int(np.floor(np.log2(max(1, min(shape))))))
    return deepest if wanted is None else max(1, min(wanted, deepest))


def gaussian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    pyr = [x]
    for _ in range(levels - 1):
        pyr.append(_downsample(pyr[-1]))
    return pyr


def laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    gauss = gaussian_pyramid(x, levels)
    details = [g - _upsample(g_next, g.shape[1:3]) for g, g_next in zip(gauss[:-1], gauss[1:])]
    return details + [gauss[-1]]


def collapse(pyr: list[np.ndarray]) -> np.ndarray:
    out = pyr[-1]
    for detail in reversed(pyr[:-1]):
        out = detail + _upsample(out, detail.shape[1:3])
    return out


def rgb_to_ycbcr(x: np.ndarray) -> np.ndarray:
    out = x @ _RGB_TO_YCBCR.T
    out[..., 1:] += 0.5
    return out


def ycbcr_to_rgb(x: np.ndarray) -> np.ndarray:
    shifted = x.copy()
    shifted[..., 1:] -= 0.5
    return shifted @ _YCBCR_TO_RGB.T


def blend(a: np.ndarray, b: np.ndarray, weight_a: np.ndarray, levels: int) -> np.ndarray:
    """Laplacian-pyramid blend: each detail level of a and b (N, H, W, C) mixed by the Gaussian-
    pyramid level of A's weight (N, H, W, 1) in [0, 1] (B's is 1 - weight_a), then collapsed."""
    weights = gaussian_pyramid(weight_a, levels)
    la, lb = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    return collapse([w * xa + (1 - w) * xb for w, xa, xb in zip(weights, la, lb)])


def is_grey(image: np.ndarray) -> bool:
    """One (H, W, C) image with one channel, or three equal ones (grey stored as RGB)."""
    return image.shape[-1] == 1 or bool(np.array_equal(image[..., 0], image[..., 1])
                                        and np.array_equal(image[..., 0], image[..., 2]))
