"""Textbook properties of the extended metric families on synthetic images: identity, symmetry,
known values, and the vectorised FMI against a literal transcription of fmi.m's inner loop."""
from __future__ import annotations

import numpy as np
import pytest

from tcmoa.metrics import REGISTRY, evaluate, get_convention
from tcmoa.metrics.feature import matlab_sobel_edges, phase_congruency
from tcmoa.metrics.information_ext import pairwise_fmi, tsallis_mi, window_pdfs, window_vectors
from tcmoa.metrics.information import joint_histograms

EXT = ["NMI", "Qncie", "TE", "FMI", "FMI_pixel", "FMI_dct", "FMI_w", "MEF_SSIM", "Qy", "Qc", "Qs", "Qw",
       "Qe", "CC", "SCD", "Qp", "VIFF", "VIFP"]


def scene(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth grey scene with edges and texture, uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 120 + 50 * np.sin(x / 7.0) * np.cos(y / 11.0) + 40 * (x > w // 2) + rng.normal(0, 8, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def exposures(h: int = 96, w: int = 96):
    base = scene(h, w).astype(float)
    under = np.clip(base * 0.5, 0, 255).astype(np.uint8)
    over = np.clip(base * 1.6 + 40, 0, 255).astype(np.uint8)
    fused = np.clip(0.5 * under + 0.5 * over, 0, 255).astype(np.uint8)
    return fused, under, over


@pytest.fixture(scope="module")
def identical():
    img = scene()
    return evaluate(img, img, img, metrics=EXT, preset="standard")


@pytest.mark.parametrize(
    "name, expected",
    [("NMI", 2.0), ("FMI", 1.0), ("FMI_pixel", 1.0), ("FMI_dct", 1.0), ("FMI_w", 1.0),
     ("MEF_SSIM", 1.0), ("Qy", 1.0), ("Qc", 1.0), ("Qs", 1.0), ("Qw", 1.0), ("Qe", 1.0), ("CC", 1.0),
     ("VIFF", 1.0), ("VIFP", 2.0)],
)
def test_identical_images_reach_the_ideal_value(identical, name, expected):
    assert identical[name] == pytest.approx(expected, abs=1e-6)


def test_qncie_of_identical_images_known_value(identical):
    # NCC(X, X) = H(X) / log2(256); the correlation matrix of three copies has eigenvalues
    # 1 + 2r, 1 - r, 1 - r, and Q_NCIE = 1 + sum(l log_256(l / 3)) / 3.
    p = np.bincount(scene().ravel(), minlength=256) / scene().size
    r = -(p[p > 0] * np.log2(p[p > 0])).sum() / 8
    eig = np.array([1 + 2 * r, 1 - r, 1 - r])
    assert identical["Qncie"] == pytest.approx(1 + (eig * np.log2(eig / 3) / 3).sum() / 8)
    flat_hist = np.arange(256, dtype=np.uint8).reshape(16, 16)  # uniform histogram: r = 1
    assert evaluate(flat_hist, flat_hist, flat_hist, metrics=["Qncie"])["Qncie"] == pytest.approx(1.0)


def test_qp_of_identical_images_is_high_but_not_one(identical):
    # metricZhao.m masks the source features (PC > 0.1) but not the fused one, so the local
    # correlations drop below 1 along the mask borders even for identical images.
    assert 0.8 < identical["Qp"] < 1.0


def test_every_extended_metric_is_registered_with_a_direction():
    for name in EXT:
        spec = REGISTRY[name]
        assert spec.description and isinstance(spec.higher_is_better, bool)


@pytest.mark.parametrize("preset", ["standard", "mefb"])
def test_symmetric_in_the_two_sources(preset):
    fused, under, over = exposures()
    rgb = lambda g, k: np.stack([g, np.roll(g, k, axis=1), 255 - g], axis=-1)  # noqa: E731
    f, a, b = (rgb(x, k) for x, k in ((fused, 1), (under, 2), (over, 3))) if preset == "mefb" else (fused, under, over)
    # Q_C is not symmetric as the toolbox defines it: a covariance weight below 0 gives 0, above 1
    # gives 1, and swapping the sources turns one case into the other.
    symmetric = [m for m in EXT if m != "Qc"]
    ab = evaluate(f, a, b, metrics=symmetric, preset=preset)
    ba = evaluate(f, b, a, metrics=symmetric, preset=preset)
    for name in symmetric:
        assert ab[name] == pytest.approx(ba[name], rel=1e-9, abs=1e-12), name


def test_degradation_lowers_the_fidelity_metrics():
    fused, under, over = exposures()
    noisy = np.clip(fused + np.random.default_rng(1).normal(0, 25, fused.shape), 0, 255).astype(np.uint8)
    names = ["MEF_SSIM", "Qy", "Qc", "Qs", "Qw", "Qp", "VIFF", "VIFP", "FMI_pixel", "NMI"]
    clean = evaluate(fused, under, over, metrics=names, preset="standard")
    worse = evaluate(noisy, under, over, metrics=names, preset="standard")
    for name in names:
        assert worse[name] < clean[name], name


def test_mef_ssim_keeps_the_only_structured_exposure():
    # A flat (fully saturated) exposure carries no structure: fusing to the other one is ideal.
    img = scene(64, 64)
    flat = np.full_like(img, 255)
    assert evaluate(img, img, flat, metrics=["MEF_SSIM"])["MEF_SSIM"] == pytest.approx(1.0, abs=1e-3)


def test_correlation_metrics_known_values():
    a = scene(seed=2).astype(float)
    b = scene(seed=3).astype(float)
    affine = np.round(0.5 * a + 20).astype(np.uint8)
    src = a.astype(np.uint8)
    assert evaluate(affine, src, src, metrics=["CC"])["CC"] == pytest.approx(1.0, abs=1e-3)
    # F = A + B exactly (float levels, no rounding): F - B = A and F - A = B, so SCD = 2.
    conv = get_convention("standard").replace(quantize=False)
    scd = evaluate((a + b) / 510, a / 510, b / 510, metrics=["SCD"], preset=conv)["SCD"]
    assert scd == pytest.approx(2.0, abs=1e-9)


def test_tsallis_known_value_and_marginals():
    # Two equiprobable levels, F = X: sum p(x,x)^q / (p(x) p(x))^(q-1) = 2 * 0.5^(2-q).
    x = np.zeros((1, 8, 8))
    x[:, :, 4:] = 255
    q = 1.85
    pxf = joint_histograms(x, x)
    expected = (1 - 2 * 0.5 ** (2 - q)) / (1 - q)
    assert tsallis_mi(pxf, q, "matched")[0] == pytest.approx(expected)
    # The toolbox's swapped marginals equal the textbook ones when X and F share a histogram ...
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (1, 32, 32)).astype(float)
    perm = rng.permutation(src.ravel()).reshape(src.shape)
    same_hist = joint_histograms(src, perm)
    assert tsallis_mi(same_hist, q, "swapped") == pytest.approx(tsallis_mi(same_hist, q, "matched"))
    # ... and not otherwise.
    other = joint_histograms(src, np.floor(src / 2))
    assert abs(tsallis_mi(other, q, "swapped")[0] - tsallis_mi(other, q, "matched")[0]) > 1e-3


def test_qw_domain_switch():
    fused, under, over = exposures()
    edges = get_convention("standard").replace(extra={"Qw.domain": "edges"})
    plain = evaluate(fused, under, over, metrics=["Qw", "Qe"], preset="standard")
    on_edges = evaluate(fused, under, over, metrics=["Qw"], preset=edges)["Qw"]
    # Q_E (alpha = 1) = Q_W of the images times Q_W of the edge images.
    assert plain["Qe"] == pytest.approx(plain["Qw"] * on_edges)


def _fmi_window_reference(a_pdf: np.ndarray, f_pdf: np.ndarray) -> float:
    """fmi.m's inner loop for one window pair, transcribed literally (all L x L joint cells)."""
    l = len(a_pdf)
    a_cdf, f_cdf = np.cumsum(a_pdf), np.cumsum(f_pdf)
    ta, tf = a_pdf - a_pdf.mean(), f_pdf - f_pdf.mean()
    c = 0.0 if (ta * tf).sum() == 0 else (ta * tf).sum() / np.sqrt((ta * ta).sum() * (tf * tf).sum())
    i = np.arange(1, l + 1)
    sd_a = np.sqrt(max((i**2 * a_pdf).sum() - (i * a_pdf).sum() ** 2, 0))
    sd_f = np.sqrt(max((i**2 * f_pdf).sum() - (i * f_pdf).sum() ** 2, 0))
    if c >= 0:
        bound = lambda x, y: 0.5 * (x + y - abs(x - y))  # noqa: E731
        degenerate = c == 0 or sd_a == 0 or sd_f == 0
    else:
        bound = lambda x, y: 0.5 * (x + y - 1 + abs(x + y - 1))  # noqa: E731
        degenerate = sd_a == 0 or sd_f == 0
    cov = sum(bound(f_cdf[p], a_cdf[q]) - f_cdf[p] * a_cdf[q] for p in range(l) for q in range(l))
    ratio = 0.0 if degenerate else c / (cov / (sd_f * sd_a))
    cdf = lambda p, q: 0.0 if p < 0 or q < 0 else bound(f_cdf[p], a_cdf[q])  # noqa: E731
    joint = 0.0
    for p in range(l):
        for q in range(l):
            cell = cdf(p, q) - cdf(p - 1, q) - cdf(p, q - 1) + cdf(p - 1, q - 1)
            jp = ratio * cell + (1 - ratio) * f_pdf[p] * a_pdf[q]
            joint += 0.0 if jp == 0 else -jp * np.log2(abs(jp))
    h_a = -sum(p * np.log2(p) for p in a_pdf if p != 0)
    h_f = -sum(p * np.log2(p) for p in f_pdf if p != 0)
    mi = h_a + h_f - joint
    return 0.0 if mi == 0 else 2 * mi / (h_a + h_f)


def test_vectorised_fmi_matches_the_literal_loop():
    rng = np.random.default_rng(0)
    kinds = [
        lambda: (rng.random(9), rng.random(9)),
        lambda: (rng.integers(0, 2, 9).astype(float), rng.integers(0, 2, 9).astype(float)),
        lambda: (rng.integers(0, 3, 9).astype(float), rng.integers(0, 3, 9).astype(float)),
        lambda: (lambda v: (v, -v + 0.1 * rng.random(9)))(rng.random(9)),  # negative correlation
    ]
    pairs = [kinds[k % len(kinds)]() for k in range(160)]
    a = window_pdfs(np.array([p[0] for p in pairs]).T)
    f = window_pdfs(np.array([p[1] for p in pairs]).T)
    ours = pairwise_fmi(a, f)
    reference = [_fmi_window_reference(a[:, k], f[:, k]) for k in range(len(pairs))]
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)


def test_fmi_maps_side_by_side_match_the_per_window_kernel():
    """The SIMD map kernel (windows side by side, polynomial log2) against the per-window kernel on
    every kind of window: continuous, binary, few levels, constant, anti-correlated, identical to
    the fused one; a window count that fills neither the lanes nor the parallel chunks."""
    from tcmoa.metrics.fmi_lanes import log2, map_window_fmi

    rng = np.random.default_rng(1)
    h, w = 37, 151  # 35 x 149 = 5215 windows of 3 x 3
    fused = rng.random((h, w))
    fused[:, 60:80] = rng.integers(0, 3, (h, 20))  # few levels
    fused[5:12, 100:110] = 7.0  # constant
    src = np.stack([rng.random((h, w)), rng.integers(0, 2, (h, w)).astype(float)])
    src[0, :, 120:] = -fused[:, 120:] + 0.05 * rng.random((h, 31))  # anti-correlated
    src[1, 20:30, 20:50] = fused[20:30, 20:50]  # identical windows score 1
    ours = map_window_fmi(src, fused, 3, np.arange(35 * 149))
    for m in range(2):
        a, f = window_pdfs(window_vectors(src[m], 3)), window_pdfs(window_vectors(fused, 3))
        expected = pairwise_fmi(a, f)
        same = (window_vectors(src[m], 3) == window_vectors(fused, 3)).all(axis=0)
        expected[same] = 1.0
        np.testing.assert_allclose(ours[m], expected, rtol=0, atol=1e-13)
    assert (ours[1].reshape(35, 149)[21:27, 21:47] == 1.0).all()
    x = np.concatenate([rng.random(1000) ** 8, [1.0, 0.5, 2.0, np.sqrt(2), 1e-300, 3e300]])
    np.testing.assert_allclose([log2(v) for v in x], np.log2(x), rtol=1e-15, atol=0)


def test_qp_masked_correlation_matches_the_filter2_form():
    """The compiled masked correlation of Q_P against metricZhao.m's formula written with filter2."""
    from tcmoa.metrics.masked_correlation import masked_correlation_sum
    from tcmoa.metrics.structural_ext import filter2, gaussian_1d

    rng = np.random.default_rng(5)
    h, w = 61, 83
    feats = rng.random((3, h, w)).astype(np.float32) ** 2
    fused = (0.5 * feats[0] + 0.3 * rng.random((h, w))).astype(np.float32)
    masks = rng.random((3, h, w)) > 0.3
    srcs = (feats * masks).astype(np.float32)
    win, c = gaussian_1d(11, 1.5).astype(np.float32), np.float32(1e-4)
    mu, mu_f = filter2(srcs, win, "same"), filter2(fused, win, "same")
    var = filter2(srcs * srcs, win, "same") - mu**2
    var_f = filter2(fused * fused, win, "same") - mu_f**2
    cov = filter2(srcs * fused, win, "same") - mu * mu_f
    corr = np.where(masks, (cov + c) / (np.sqrt(np.abs(var * var_f)) + c), 0.0)
    expected = corr.max(axis=0).sum(dtype=np.float64)
    assert masked_correlation_sum(srcs, masks, fused, win, 1e-4) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("taps", ["gauss11", "antisymmetric", "general", "even"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_separable_correlation_is_scipys_bit_for_bit(taps, dtype):
    """The compiled filter2 pass equals ndimage.correlate1d (axis -2 then -1, zero padding) exactly,
    for each of scipy's tap orders, image stacks smaller than the window included."""
    from scipy import ndimage

    from tcmoa.metrics.separable import correlate_separable
    from tcmoa.metrics.structural_ext import gaussian_1d

    rng = np.random.default_rng(7)
    w = {"gauss11": gaussian_1d(11, 1.5), "antisymmetric": np.array([-1.0, -2.0, 0.0, 2.0, 1.0]),
         "general": rng.random(5), "even": rng.random(4)}[taps]
    for shape in [(3, 40, 57), (23, 31), (2, 2, 5, 9)]:
        x = (rng.random(shape) * 100).astype(dtype)
        expected = ndimage.correlate1d(ndimage.correlate1d(x, w, axis=-2, mode="constant"), w, axis=-1, mode="constant")
        ours = correlate_separable(x, w)
        assert ours.dtype == expected.dtype and np.array_equal(ours, expected)


def test_radix_median_is_numpys():
    from tcmoa.metrics.phase_kernels import median_nonnegative

    rng = np.random.default_rng(11)
    for shape in [(480, 640), (7,), (8,), (1,), (2,), (101, 33)]:
        for x in (rng.random(shape) ** 3, rng.integers(0, 5, shape), np.zeros(shape)):
            x = x.astype(np.float32)
            ours, expected = median_nonnegative(x), np.median(x)
            assert ours == expected and ours.dtype == expected.dtype


def test_window_vectors_are_column_major_within_the_window():
    img = np.arange(12.0).reshape(3, 4)
    vec = window_vectors(img, 3)
    np.testing.assert_array_equal(vec[:, 0], img[:3, :3].T.ravel())  # MATLAB aSub(:)
    np.testing.assert_array_equal(vec[:, 1], img[:3, 1:4].T.ravel())


def test_matlab_sobel_edges_thin_a_step_to_one_column():
    img = np.zeros((20, 20))
    img[:, 10:] = 255.0
    edges = matlab_sobel_edges(img)
    assert edges[:, 10].all() and edges.sum() == 20


def test_phase_congruency_peaks_on_a_step_edge():
    img = np.zeros((64, 64))
    img[:, 32:] = 255.0
    pc, big, _ = phase_congruency(img)
    assert pc[:, 31:33].max(axis=1).min() > 0.5
    assert pc[:, 5:20].max() < 0.1
    assert big[:, 31:33].max() > big[:, 5:20].max()


def test_ms_ssim_identity_and_noise():
    img = scene(192, 192)
    noisy = np.clip(img + np.random.default_rng(4).normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    assert evaluate(img, img, img, metrics=["MS_SSIM"])["MS_SSIM"] == pytest.approx(1.0, abs=1e-9)
    assert evaluate(noisy, img, img, metrics=["MS_SSIM"])["MS_SSIM"] < 0.95


def test_too_small_images_are_refused_with_a_reason():
    tiny = scene(30, 30)
    with pytest.raises(ValueError, match="MEF-SSIM needs"):
        evaluate(tiny, tiny, tiny, metrics=["MEF_SSIM"])
