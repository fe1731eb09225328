"""Feature maps for the feature-based metrics: phase congruency and Q_P, and the FMI features.

Q_P (Zhao, Laganiere & Liu 2007) compares the phase congruency and the maximum and minimum
moments of its covariance (Kovesi's phasecong3, as revised in Z. Liu's myphasecong3.m that MEFB
ships) between the sources and the fused image with masked local correlations. The 24 log-Gabor
filters (4 scales x 6 orientations) depend only on the image size and are cached; the filtering is
batched FFTs in single precision (the phase congruency needs no more).

FMI features (Haghighat's fmi.m): 'edge' = MATLAB `edge(I)` (Sobel, automatic threshold, thinned),
'none' = the pixels, 'dct' = the orthonormal 2-D DCT of the whole image, 'wavelet' = the one-level
discrete Meyer DWT laid out as [cA cH; cV cD] and rescaled to [0, 1], 'gradient' = the horizontal
central difference.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

from tcmoa.metrics.masked_correlation import masked_correlation_sum
from tcmoa.metrics.phase_kernels import accumulate_orientation, median_nonnegative, orientation_energy
from tcmoa.metrics.prepare import once_per_plane, planes
from tcmoa.metrics.registry import Convention, register
from tcmoa.metrics.structural_ext import gaussian_1d

# --------------------------------------------------------------------------------------------
# FMI features


def matlab_sobel_edges(img: np.ndarray) -> np.ndarray:
    """MATLAB `edge(img)`: Sobel gradients (kernels / 8, replicated border), threshold
    sqrt(4 mean(g^2)) and the toolbox's thinning (a horizontal or vertical local maximum)."""
    p = np.pad(img, 1, mode="edge")
    # imfilter correlation with op' and op, op = fspecial('sobel') / 8.
    gx = ((p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2]) - (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:])) / 8
    gy = ((p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:]) - (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:])) / 8
    mag = gx * gx + gy * gy
    cutoff = 4 * mag.sum() / mag.size
    bx, by = np.abs(gx), np.abs(gy)
    tol = 100 * np.finfo(float).eps
    # Neighbours beyond the border never block a maximum.
    left = np.pad(mag, ((0, 0), (1, 0)), constant_values=-np.inf)[:, :-1]
    right = np.pad(mag, ((0, 0), (0, 1)), constant_values=-np.inf)[:, 1:]
    up = np.pad(mag, ((1, 0), (0, 0)), constant_values=-np.inf)[:-1, :]
    down = np.pad(mag, ((0, 1), (0, 0)), constant_values=-np.inf)[1:, :]
    horizontal = (bx >= by - tol) & (left <= mag) & (mag > right)
    vertical = (by >= bx - tol) & (up <= mag) & (mag > down)
    return ((mag > cutoff) & (horizontal | vertical)).astype(np.float64)


def _rerange(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(), x.max()
    return np.ones_like(x) if hi == lo else (x - lo) / (hi - lo)


def _dmey_layout(img: np.ndarray) -> np.ndarray:
    import pywt  # PyWavelets: only this feature needs it

    ca, (ch, cv, cd) = pywt.dwt2(img, "dmey", mode="symmetric")
    return _rerange(np.block([[ca, ch], [cv, cd]]))


FMI_FEATURES = {
    "edge": matlab_sobel_edges,
    "none": lambda x: x,
    "dct": lambda x: scipy.fft.dctn(x, norm="ortho"),
    "wavelet": _dmey_layout,
    "gradient": lambda x: np.gradient(x, axis=1),
}


def fmi_features(images: tuple[np.ndarray, ...], feature: str) -> tuple[np.ndarray, ...]:
    """The feature map of each (H, W) image."""
    try:
        extract = FMI_FEATURES[feature]
    except KeyError:
        raise ValueError(f"unknown FMI feature {feature!r}; choose from {sorted(FMI_FEATURES)}") from None
    return tuple(extract(np.asarray(x, dtype=np.float64)) for x in images)


# --------------------------------------------------------------------------------------------
# Phase congruency (Kovesi's phasecong3 as revised by Z. Liu: myphasecong3.m)

NSCALE, NORIENT, MIN_WAVELENGTH, MULT, SIGMA_ON_F, D_THETA_ON_SIGMA = 4, 6, 3, 2.1, 0.55, 1.2
K_NOISE, CUT_OFF, G_SIGMOID, EPSILON = 2.0, 0.5, 10.0, 1e-4


def _centred_range(n: int) -> np.ndarray:
    if n % 2:
        return np.arange(-(n - 1) / 2, (n - 1) / 2 + 1) / (n - 1)
    return np.arange(-n / 2, n / 2) / n


@lru_cache(maxsize=4)
def _log_gabor_bank(rows: int, cols: int):
    """The 6x4 filters (float32, zero frequency at the corner) and per-orientation noise constants."""
    x, y = np.meshgrid(_centred_range(cols), _centred_range(rows))
    radius = np.sqrt(x**2 + y**2)
    radius[rows // 2, cols // 2] = 1.0
    theta = np.arctan2(-y, x)
    radius = np.fft.ifftshift(radius)
    theta = np.fft.ifftshift(theta)
    sin_t, cos_t = np.sin(theta), np.cos(theta)

    # Butterworth low-pass (radius 0.45, order 15); myphasecong3 centres it with fftshift.
    lx = (np.arange(1, cols + 1)[None, :] - (cols // 2 + 1)) / cols
    ly = (np.arange(1, rows + 1)[:, None] - (rows // 2 + 1)) / rows
    lowpass = np.fft.fftshift(1.0 / (1.0 + (np.sqrt(lx**2 + ly**2) / 0.45) ** 30))

    radial = []
    for s in range(NSCALE):
        fo = 1.0 / (MIN_WAVELENGTH * MULT**s)
        lg = np.exp(-(np.log(radius / fo) ** 2) / (2 * np.log(SIGMA_ON_F) ** 2)) * lowpass
        lg[0, 0] = 0.0
        radial.append(lg)
    theta_sigma = np.pi / NORIENT / D_THETA_ON_SIGMA
    filters = np.empty((NORIENT, NSCALE, rows, cols), dtype=np.float32)
    noise = np.empty((NORIENT, 3))
    for o in range(NORIENT):
        angl = o * np.pi / NORIENT
        ds = sin_t * np.cos(angl) - cos_t * np.sin(angl)
        dc = cos_t * np.cos(angl) + sin_t * np.sin(angl)
        spread = np.exp(-(np.arctan2(ds, dc) ** 2) / (2 * theta_sigma**2))
        bank = np.stack([lg * spread for lg in radial])
        filters[o] = bank
        # Noise model constants: sums over the spatial filters (real part of their inverse FFT).
        spatial = np.real(np.fft.ifft2(bank)) * np.sqrt(rows * cols)
        sum_an2 = (spatial**2).sum()
        sum_aiaj = sum((spatial[i] * spatial[j]).sum() for i in range(NSCALE) for j in range(i + 1, NSCALE))
        noise[o] = ((bank[0] ** 2).sum(), sum_an2, sum_aiaj)
    return filters, noise


def phase_congruency(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """myphasecong3(img): phase congruency, maximum moment M and minimum moment m of (H, W) img."""
    rows, cols = img.shape
    filters, noise = _log_gabor_bank(rows, cols)
    spectrum = scipy.fft.fft2(img.astype(np.float32))
    total_energy = np.zeros((rows, cols), np.float32)
    total_an = np.zeros((rows, cols), np.float32)
    covx2 = np.zeros((rows, cols), np.float32)
    covy2 = np.zeros((rows, cols), np.float32)
    covxy = np.zeros((rows, cols), np.float32)
    energy, sum_an, max_an, sq0 = (np.empty((rows, cols), np.float32) for _ in range(4))
    for o in range(NORIENT):
        # The four scales are independent transforms: one per core.
        eo = scipy.fft.ifft2(spectrum[None] * filters[o], axes=(-2, -1), workers=-1)
        orientation_energy(eo, energy, sum_an, max_an, sq0, EPSILON)
        # Noise threshold from the median squared response at the smallest scale (Rayleigh model).
        em_n, sum_an2, sum_aiaj = noise[o]
        mean_e2n = -median_nonnegative(sq0) / np.log(0.5)
        noise_power = mean_e2n / em_n
        tau = np.sqrt((2 * noise_power * sum_an2 + 4 * noise_power * sum_aiaj) / 2)
        threshold = (tau * np.sqrt(np.pi / 2) + K_NOISE * np.sqrt((2 - np.pi / 2) * tau**2)) / 1.7
        angl = o * np.pi / NORIENT
        accumulate_orientation(energy, sum_an, max_an, threshold, NSCALE, EPSILON, CUT_OFF, G_SIGMOID,
                               np.cos(angl), np.sin(angl), total_energy, total_an, covx2, covy2, covxy)
    pc_all = total_energy / (total_an + EPSILON)
    covx2 /= NORIENT / 2
    covy2 /= NORIENT / 2
    covxy /= NORIENT
    denom = np.sqrt(covxy**2 + (covx2 - covy2) ** 2) + EPSILON
    big = (covy2 + covx2 + denom) / 2
    small = (covy2 + covx2 - denom) / 2
    return pc_all.astype(np.float64), big.astype(np.float64), small.astype(np.float64)


def _masked_correlation(f1, f2, fmax, ff, mask1, mask2, mask3) -> float:
    """correlation_coeffcient of metricZhao.m: the best of three masked local correlations with
    the fused feature, summed and divided by the size of the joint feature mask."""
    # Single precision suffices: the features lie in [0, ~1] and the constant is 1e-4.
    w = gaussian_1d(11, 1.5).astype(np.float32)
    srcs = np.stack([f1 * mask1, f2 * mask2, fmax * mask3]).astype(np.float32)
    masks = np.stack([mask1, mask2, mask3])
    total = masked_correlation_sum(srcs, masks, np.ascontiguousarray(ff, dtype=np.float32), w, 1e-4)
    return float(total / mask3.sum())


def zhao_qp(src1: np.ndarray, src2: np.ndarray, fused: np.ndarray, threshold: float = 0.1, congruency=None) -> float:
    """metricZhao.m on (H, W) images: product of the PC, M and m correlation terms.
    `congruency` replaces `phase_congruency` (e.g. by a memoised one)."""
    congruency = congruency or phase_congruency
    pc1, big1, small1 = congruency(src1)
    pc2, big2, small2 = congruency(src2)
    pcf, bigf, smallf = congruency(fused)
    first = pc1 > pc2
    mask1, mask2 = pc1 > threshold, pc2 > threshold
    mask3 = np.where(first, pc1, pc2) > threshold
    result = 1.0
    for s1, s2, sf in ((pc1, pc2, pcf), (big1, big2, bigf), (small1, small2, smallf)):
        result *= _masked_correlation(s1, s2, np.where(first, s1, s2), sf, mask1, mask2, mask3)
    return result


@register(
    "Qp",
    higher_is_better=True,
    description="Phase-congruency metric Q_P (Zhao et al. 2007): how the fused image keeps the sources' "
    "phase congruency and its moments (0..1)",
    aliases=("Q_P", "QP"),
)
def qp(fused, a, b, conv: Convention) -> float:
    congruency = once_per_plane(phase_congruency)
    planes_abf = zip(planes(fused), planes(a), planes(b))
    return float(np.mean([zhao_qp(x, y, f, congruency=congruency) for f, x, y in planes_abf]))
