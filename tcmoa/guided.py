"""Prompt-guided reconstruction: the fused image built from the source pixels themselves.

The TC-MoA prompts say, per token, how much of each source the model keeps (p_A, p_B). Here
source A's share w = p_A / (p_A + p_B), smoothly upsampled to pixels, weights a Laplacian-pyramid
blend of the sources (Burt & Adelson): each band-pass level of A and B is mixed with the
Gaussian-pyramid level of w, so transitions are wide at coarse scales and narrow at fine ones.
Where w is 1 (or 0) over a region, the output there is source A (or B) exactly: its radiometry
and sharpness are kept and no detail is invented. With w = 0.5 everywhere the blend is the pixel
average. Grey + colour pairs are fused in luminance and take the colour source's chroma.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)  # BT.601, as the decoder path's grey output
_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Separable 5-tap binomial blur with edge replication; x: (B, C, H, W)."""
    kernel = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device) / 16.0
    c = x.shape[1]
    x = F.pad(x, (2, 2, 0, 0), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    x = F.pad(x, (0, 0, 2, 2), mode="replicate")
    return F.conv2d(x, kernel.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[..., ::2, ::2]


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def default_levels(height: int, width: int) -> int:
    """Pyramid depth: halve until the coarsest level is about 8 px (at most 7 levels)."""
    return max(1, min(7, int(math.log2(max(min(height, width), 1) / 8)) + 1))


def pyramid_blend(a: torch.Tensor, b: torch.Tensor, weight_a: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    """Laplacian-pyramid blend of a and b (B, C, H, W) with A's weight (B, 1, H, W) in [0, 1]."""
    levels = levels or default_levels(*a.shape[-2:])
    out_levels = []
    ga, gb, gw = a, b, weight_a
    for _ in range(levels - 1):
        na, nb = _down(ga), _down(gb)
        size = tuple(ga.shape[-2:])
        # band-pass detail of this level, mixed by this level's weights
        out_levels.append(gw * (ga - _up(na, size)) + (1 - gw) * (gb - _up(nb, size)))
        ga, gb, gw = na, nb, _down(gw)
    fused = gw * ga + (1 - gw) * gb  # the low-pass residual
    for detail in reversed(out_levels):
        fused = detail + _up(fused, tuple(detail.shape[-2:]))
    return fused


def is_grey(x: torch.Tensor) -> torch.Tensor:
    """(B,) True where a (B, C, H, W) image has one channel or three equal ones."""
    if x.shape[1] == 1:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return ((x - x[:, :1]).abs().amax(dim=(1, 2, 3)) == 0)


def luminance(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def guided_fusion(a: torch.Tensor, b: torch.Tensor, weight_a: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    """Fuse sources a, b (B, C, H, W) in [0, 1], C in {1, 3}, with A's per-pixel share (B, 1, H, W).

    Per pair: both grey -> one grey channel (repeated when the output has 3); both colour -> the
    RGB channels blended; grey + colour -> luminance blended, plus the colour source's chroma
    (its RGB minus its luminance, so in YCbCr terms Cb and Cr are the colour source's). Returns
    (B, C_out, H, W) clipped to [0, 1], C_out = 3 if either input has 3 channels.
    """
    channels = max(a.shape[1], b.shape[1])
    grey_a, grey_b = is_grey(a), is_grey(b)
    out = []
    for i in range(a.shape[0]):
        ai, bi, wi = a[i:i + 1], b[i:i + 1], weight_a[i:i + 1]
        if bool(grey_a[i]) and bool(grey_b[i]):
            fused = pyramid_blend(ai[:, :1], bi[:, :1], wi, levels).expand(-1, channels, -1, -1)
        elif not bool(grey_a[i]) and not bool(grey_b[i]):
            fused = pyramid_blend(ai, bi, wi, levels)
        else:
            colour = ai if not bool(grey_a[i]) else bi
            y = pyramid_blend(luminance(ai), luminance(bi), wi, levels)
            fused = y + (colour - luminance(colour))
        out.append(fused)
    return torch.cat(out).clamp(0.0, 1.0)
