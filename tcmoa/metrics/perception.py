"""Human-perception metrics: Q_CB (Chen & Blum 2009) and Q_CV (Chen & Varshney 2007).

Both follow Z. Liu's MATLAB implementations (metricChenBlum.m, metricChen.m) used by VIFB and MEFB:
images are min-max normalised to rounded 0..255 levels, filtered in the frequency domain on
MATLAB's `freqspace` grid, and local statistics use zero-padded 'same' filtering / 16x16 blocks.
"""
from __future__ import annotations

import numpy as np
from scipy import fft

from tcmoa.metrics.gradient import sobel
from tcmoa.metrics.prepare import planes, round_half_up
from tcmoa.metrics.registry import Convention, register


def normalize_levels(stack: np.ndarray) -> np.ndarray:
    """Liu's normalize1 per plane: min-max to 0..255 and rounded; an all-zero plane is left as is."""
    lo = stack.min(axis=(1, 2), keepdims=True)
    hi = stack.max(axis=(1, 2), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = round_half_up((stack - lo) / (hi - lo) * 255)
    return np.where((hi == 0) & (lo == 0), stack, scaled)


def freq_radius(h: int, w: int, scale_x: float, scale_y: float) -> np.ndarray:
    """sqrt(u^2 + v^2) on MATLAB's freqspace([h w], 'meshgrid') grid with u, v scaled."""
    fx = (np.arange(w) - w // 2) * (2.0 / w) * scale_x
    fy = (np.arange(h) - h // 2) * (2.0 / h) * scale_y
    return np.sqrt(fx[None, :] ** 2 + fy[:, None] ** 2)


def _filter_centered(stack: np.ndarray, response: np.ndarray) -> np.ndarray:
    """ifft2(ifftshift(fftshift(fft2(x)) .* H)) of real planes for a centred, radially built H.

    H comes from a radius on the freqspace grid, so after ifftshift it is real and even
    (H(k) = H(-k)): the MATLAB result is real up to rounding, and real FFTs compute it exactly.
    """
    h, w = stack.shape[1:]
    half = fft.ifftshift(response)[:, : w // 2 + 1]
    spectrum = fft.rfft2(stack, axes=(1, 2))
    return fft.irfft2(spectrum * half, s=(h, w), axes=(1, 2))


def _gaussian31(sigma: float) -> np.ndarray:
    # Liu's gaussian2d: a 31x31 window, 1 / (2 pi sigma^2) scaling, not renormalised.
    x = np.arange(-15, 16)
    xx, yy = np.meshgrid(x, x)
    return np.exp(-(xx**2 + yy**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)


def _filter_same_zero_padded(stack: np.ndarray, kernels: list[np.ndarray]) -> list[np.ndarray]:
    """filter2(G, x, 'same') (zero padding) of a real (K, H, W) stack for symmetric kernels G.

    One forward FFT of the zero-padded stack serves all kernels (linear, not circular, convolution).
    """
    h, w = stack.shape[1:]
    kh, kw = kernels[0].shape
    shape = (fft.next_fast_len(h + kh - 1, real=True), fft.next_fast_len(w + kw - 1, real=True))
    spectrum = fft.rfft2(stack, s=shape, axes=(1, 2))
    oy, ox = kh // 2, kw // 2
    out = []
    for kernel in kernels:
        full = fft.irfft2(spectrum * fft.rfft2(kernel, s=shape), s=shape, axes=(1, 2))
        out.append(full[:, oy : oy + h, ox : ox + w])
    return out


def _chen_blum_plane(a: np.ndarray, b: np.ndarray, fused: np.ndarray, csf: np.ndarray) -> float:
    k, h, z = 1.0, 1.0, 0.0001  # C^p / (C^q + Z) with p = 3, q = 2
    filtered = _filter_centered(normalize_levels(np.stack([a, b, fused])), csf)
    g1, g2 = _filter_same_zero_padded(filtered, [_gaussian31(2.0), _gaussian31(4.0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        contrast = np.abs(g1 / g2 - 1)
        c_sq = contrast * contrast
        c1, c2, cf = k * contrast * c_sq / (h * c_sq + z)
        # MATLAB's (x./y).*mask + (y./x).*(1-mask), kept as is (0 * Inf gives NaN there too).
        m1 = (c1 < cf).astype(float)
        q1 = (c1 / cf) * m1 + (cf / c1) * (1 - m1)
        m2 = (c2 < cf).astype(float)
        q2 = (c2 / cf) * m2 + (cf / c2) * (1 - m2)
        lam1 = c1 * c1 / (c1 * c1 + c2 * c2)
        lam2 = c2 * c2 / (c1 * c1 + c2 * c2)
        return float((lam1 * q1 + lam2 * q2).mean())


@register(
    "Qcb",
    higher_is_better=True,
    description="Chen-Blum: local contrast preservation after a CSF (DoG) filter, saliency weighted (0..1)",
    aliases=("Q_CB", "QCB"),
)
def chen_blum(fused, a, b, conv: Convention) -> float:
    f0, f1, a_dog = 15.3870, 1.3456, 0.7622
    rows, cols = fused.shape[:2]
    r = freq_radius(rows, cols, cols / 30, rows / 30)
    csf = np.exp(-((r / f0) ** 2)) - a_dog * np.exp(-((r / f1) ** 2))
    # One channel at a time: the FFT work arrays of a 3-channel stack would triple the memory.
    return float(np.mean([_chen_blum_plane(x, y, f, csf) for x, y, f in zip(planes(a), planes(b), planes(fused))]))


def _block_reduce(x: np.ndarray, size: int, fn) -> np.ndarray:
    """blkproc with [size size] blocks: partial blocks at the border are zero-padded to full size."""
    k, h, w = x.shape
    ph, pw = -h % size, -w % size
    padded = np.pad(x, ((0, 0), (0, ph), (0, pw)))
    blocks = padded.reshape(k, (h + ph) // size, size, (w + pw) // size, size)
    return fn(blocks, axis=(2, 4))


@register(
    "Qcv",
    higher_is_better=False,
    description="Chen-Varshney: CSF-filtered squared difference to the sources, weighted by regional edge saliency",
    aliases=("Q_CV", "QCV"),
)
def chen_varshney(fused, a, b, conv: Convention) -> float:
    window, alpha = 16, 5
    f, x, y = (normalize_levels(s) for s in (planes(fused), planes(a), planes(b)))
    def saliency(s: np.ndarray) -> np.ndarray:
        gx, gy = sobel(s, mode="constant")
        return _block_reduce(np.sqrt(gx**2 + gy**2) ** alpha, window, np.sum)

    lam1, lam2 = saliency(x), saliency(y)
    rows, cols = f.shape[1:]
    r = freq_radius(rows, cols, cols / 8, rows / 8)
    mannos_sakrison = 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))
    diff = _filter_centered(np.concatenate([x - f, y - f]), mannos_sakrison)
    # mean2(x.^2) of each zero-padded block: divided by the full block area.
    d = _block_reduce(diff**2, window, np.sum) / window**2
    n = f.shape[0]
    d1, d2 = d[:n], d[n:]
    q = (lam1 * d1 + lam2 * d2).sum(axis=(1, 2)) / (lam1 + lam2).sum(axis=(1, 2))
    return float(q.mean())
