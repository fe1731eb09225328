"""Burt & Adelson image pyramids on (N, H, W, C) float arrays, the prompt- or weight-driven blend
of two images over them, and the grey / colour helpers the pyramid fusers share (classical
baselines in `tcmoa.baselines`, prompt-guided reconstruction in `tcmoa.guided`)."""
from __future__ import annotations

import numpy as np
import torch
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


# --- the differentiable twin of blend(), for training the prompts through the guided output ---------
def _symmetric_pad(x: "torch.Tensor", dim: int, width: int) -> "torch.Tensor":
    """scipy's 'reflect' (d c b a | a b c d) padding along dim of a torch tensor."""
    n = x.shape[dim]
    head, tail = x.narrow(dim, 0, width).flip(dim), x.narrow(dim, n - width, width).flip(dim)
    return torch.cat([head, x, tail], dim=dim)


def _blur_t(x: "torch.Tensor") -> "torch.Tensor":
    c = x.shape[1]
    k = torch.as_tensor(_PYRAMID_KERNEL, dtype=x.dtype, device=x.device)
    x = torch.nn.functional.conv2d(_symmetric_pad(x, 2, 2), k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    return torch.nn.functional.conv2d(_symmetric_pad(x, 3, 2), k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)


def _upsample_t(x: "torch.Tensor", shape: tuple[int, int]) -> "torch.Tensor":
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    up = x.new_zeros(n, c, 2 * (h + 2), 2 * (w + 2))
    up[:, :, ::2, ::2] = 4 * padded
    return _blur_t(up)[:, :, 2:2 + shape[0], 2:2 + shape[1]]


def blend_torch(a: "torch.Tensor", b: "torch.Tensor", weight_a: "torch.Tensor", levels: int) -> "torch.Tensor":
    """blend() on (N, C, H, W) torch tensors, differentiable in all inputs (same kernel, borders
    and upsampling, so it equals blend() to rounding)."""
    ga, gb, gw, details = a, b, weight_a, []
    for _ in range(levels - 1):
        na, nb = _blur_t(ga)[:, :, ::2, ::2], _blur_t(gb)[:, :, ::2, ::2]
        size = tuple(ga.shape[-2:])
        details.append(gw * (ga - _upsample_t(na, size)) + (1 - gw) * (gb - _upsample_t(nb, size)))
        ga, gb, gw = na, nb, _blur_t(gw)[:, :, ::2, ::2]
    out = gw * ga + (1 - gw) * gb
    for detail in reversed(details):
        out = detail + _upsample_t(out, tuple(detail.shape[-2:]))
    return out
