"""Visual-information-fidelity metrics: VIFF (Han et al. 2013) and the pixel-domain VIF sum.

Both build on Sheikh & Bovik's pixel-domain VIF (vifp_mscale.m): at four scales a Gaussian
window (17, 9, 5, 3 taps, sigma = size / 5) gives the local gain g and distortion variance of the
fused image relative to a source, and the information the fused image keeps is
log10(1 + g^2 var_src / (var_v + noise)) against log10(1 + var_src / noise).

VIFF (MEFB's "VIF" column, `metricsVIF.m` by Han) takes, at each scale and pixel, the source with
the smaller gain, sums the kept and the reference information over the pixels and weights the four
per-scale ratios by [1, 0, 0.15, 1] / 2.15; its visual noise is 0.005 * 255^2. Per plane: RGB is
handled by the convention's colour handling (MEFB averages the channels, so Han's L*a*b* branch for
3-channel inputs is never reached there).

VIFP is the textbook vifp_mscale (noise variance 2) of the fused image against each source,
summed over the two sources as several fusion papers report it ("VIF").
"""
from __future__ import annotations

import numpy as np

from tcmoa.metrics.prepare import planes
from tcmoa.metrics.registry import Convention, register
from tcmoa.metrics.structural_ext import filter2, gaussian_1d

SCALES = 4


def _window(scale: int) -> np.ndarray:
    n = 2 ** (SCALES - scale + 1) + 1
    return gaussian_1d(n, n / 5)


def vif_scales(refs: list[np.ndarray], dist: np.ndarray, noise_var: float, skip: tuple[int, ...] = ()):
    """Per-scale maps of vifp_mscale / ComVidVindG of one distorted (K, H, W) stack against
    each reference stack (the distorted image's pyramid and statistics are computed once).

    Returns out[r][scale - 1] = (kept information, reference information, gain) maps for
    reference r, or None for the scales in `skip` (only their downsampling is needed).
    """
    out: list[list] = [[] for _ in refs]
    for scale in range(1, SCALES + 1):
        w = _window(scale)
        if scale > 1:
            refs = [filter2(r, w)[..., ::2, ::2] for r in refs]
            dist = filter2(dist, w)[..., ::2, ::2]
        if scale in skip:
            for maps in out:
                maps.append(None)
            continue
        mu2 = filter2(dist, w)
        s2 = np.maximum(filter2(dist * dist, w) - mu2**2, 0.0)
        for ref, maps in zip(refs, out):
            mu1 = filter2(ref, w)
            s1 = np.maximum(filter2(ref * ref, w) - mu1**2, 0.0)
            s12 = filter2(ref * dist, w) - mu1 * mu2
            maps.append(_information(s1, s2, s12, noise_var))
    return out


def _information(s1: np.ndarray, s2: np.ndarray, s12: np.ndarray, noise_var: float):
    """Gain g, distortion variance and the kept / reference information, with vifp's guards."""
    g = s12 / (s1 + 1e-10)
    sv = s2 - g * s12
    low1 = s1 < 1e-10
    g = np.where(low1, 0.0, g)
    sv = np.where(low1, s2, sv)
    s1 = np.where(low1, 0.0, s1)
    low2 = s2 < 1e-10
    g = np.where(low2, 0.0, g)
    sv = np.where(low2, 0.0, sv)
    neg = g < 0
    sv = np.where(neg, s2, sv)
    g = np.where(neg, 0.0, g)
    sv = np.maximum(sv, 1e-10)
    kept = np.log10(1 + g**2 * s1 / (sv + noise_var))
    reference = np.log10(1 + s1 / noise_var)
    return kept, reference, g


VIFF_WEIGHTS = np.array([1.0, 0.0, 0.15, 1.0]) / 2.15


def viff(a: np.ndarray, b: np.ndarray, f: np.ndarray, noise_var: float = 0.005 * 255 * 255) -> np.ndarray:
    """Han et al.'s VIFF per plane of (K, H, W) stacks."""
    skip = tuple(i + 1 for i, w in enumerate(VIFF_WEIGHTS) if w == 0)
    maps_a, maps_b = vif_scales([a, b], f, noise_var, skip)
    c = 1e-7
    total = np.zeros(a.shape[0])
    for weight, ma, mb in zip(VIFF_WEIGHTS, maps_a, maps_b):
        if ma is None:
            continue
        take_a = ma[2] < mb[2]
        kept = np.where(take_a, ma[0], mb[0]) + c
        reference = np.where(take_a, ma[1], mb[1]) + c
        total += weight * kept.sum(axis=(1, 2)) / reference.sum(axis=(1, 2))
    return total


@register(
    "VIFF",
    higher_is_better=True,
    description="Visual information fidelity for fusion (Han et al. 2013), MEFB's 'VIF' column (0..1)",
    # MEFB's table calls it "VIF"; the pixel-domain VIF sum is "VIFP" (alias "VIF_sum").
    aliases=("Q_VIFF", "VIF"),
)
def viff_metric(fused, a, b, conv: Convention) -> float:
    return float(viff(planes(a), planes(b), planes(fused)).mean())


def vifp(refs: list[np.ndarray], dist: np.ndarray, noise_var: float = 2.0) -> list[np.ndarray]:
    """Sheikh & Bovik's pixel-domain VIF (vifp_mscale.m) of dist against each reference, per plane
    of (K, H, W) stacks."""
    values = []
    for maps in vif_scales(refs, dist, noise_var):
        kept = sum(m[0].sum(axis=(1, 2)) for m in maps)
        reference = sum(m[1].sum(axis=(1, 2)) for m in maps)
        values.append(kept / reference)
    return values


@register(
    "VIFP",
    higher_is_better=True,
    description="Pixel-domain VIF (Sheikh & Bovik 2006) of the fused image to each source, summed over the "
    "two sources (what several fusion papers report as 'VIF'; 0..2)",
    aliases=("VIF_sum", "VIF_pixel"),
)
def vifp_metric(fused, a, b, conv: Convention) -> float:
    via, vib = vifp([planes(a), planes(b)], planes(fused))
    return float((via + vib).mean())
