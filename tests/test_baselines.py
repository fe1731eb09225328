"""The classical baselines: Fuser protocol, any size, grey/RGB, and what each method should do."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from tcmoa.baselines import BASELINES, LaplacianFuser, MertensFuser, get_baseline
from tcmoa.pyramid import collapse, laplacian_pyramid
from tcmoa.interface import Fuser, FusionResult


def scene(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 0.5 + 0.3 * np.sin(x / 4.0) * np.cos(y / 6.0) + rng.normal(0, 0.05, (h, w))
    return np.clip(img, 0, 1)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_protocol_and_identity(name):
    fuser = get_baseline(name)
    assert isinstance(fuser, Fuser) and fuser.name == name and fuser.tile_multiple == 1
    json.dumps(fuser.provenance())
    x = scene()
    result = fuser.fuse_batch(x[None, ..., None], x[None, ..., None])
    assert isinstance(result, FusionResult) and result.image.dtype == np.float32
    assert result.image.shape == (1, 64, 80, 1)
    np.testing.assert_allclose(result.image[0, ..., 0], x, atol=1e-5)  # fusing an image with itself


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (17, 5), (33, 47)])
def test_any_size_grey_and_rgb(name, shape):
    fuser = get_baseline(name)
    rng = np.random.default_rng(1)
    grey, rgb = rng.random(shape), rng.random((*shape, 3))
    for a, b, channels in ((grey, grey, 1), (rgb, rgb, 3), (rgb, grey, 3), (grey, rgb, 3)):
        out = fuser.fuse(a, b)
        assert out.shape == (*shape, channels)
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_batch_equals_pairs(name):
    fuser = get_baseline(name)
    rng = np.random.default_rng(2)
    a, b = rng.random((3, 20, 24, 3)).astype(np.float32), rng.random((3, 20, 24, 3)).astype(np.float32)
    batch = fuser.fuse_batch(a, b).image
    for i in range(3):
        np.testing.assert_allclose(batch[i], fuser.fuse(a[i], b[i]), atol=1e-6)


def test_average_is_the_pixel_mean():
    rng = np.random.default_rng(3)
    a, b = rng.random((9, 11)), rng.random((9, 11))
    np.testing.assert_allclose(get_baseline("average").fuse(a, b)[..., 0], (a + b) / 2, atol=1e-6)


def test_grey_with_rgb_keeps_the_colour_of_the_rgb_source():
    rng = np.random.default_rng(4)
    rgb = rng.random((16, 16, 3)) * 0.5 + 0.25
    grey = rng.random((16, 16))
    out = get_baseline("average").fuse(rgb, grey).astype(np.float64)
    # Chroma (Cb, Cr) of the output equals that of the RGB source; luma is the average.
    to_cbcr = np.array([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    inside = (out > 0).all(-1) & (out < 1).all(-1)
    np.testing.assert_allclose((out @ to_cbcr.T)[inside], (rgb @ to_cbcr.T)[inside], atol=1e-5)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose((out @ np.array([0.299, 0.587, 0.114]))[inside], ((luma + grey) / 2)[inside], atol=1e-5)


def test_laplacian_pyramid_reconstructs_exactly():
    x = scene(37, 53)[None, ..., None]
    np.testing.assert_allclose(collapse(laplacian_pyramid(x, 5)), x, atol=1e-12)


def test_laplacian_fusion_picks_the_sharp_source():
    sharp = scene(64, 64, seed=5)
    left_blur, right_blur = sharp.copy(), sharp.copy()
    blurred = ndimage.gaussian_filter(sharp, 2.0)
    left_blur[:, :32], right_blur[:, 32:] = blurred[:, :32], blurred[:, 32:]
    fused = LaplacianFuser().fuse(left_blur, right_blur)[..., 0]
    inner = (slice(4, -4), np.r_[4:28, 36:60])  # away from the borders and the focus seam
    err_fused = np.abs(fused - sharp)[inner].mean()
    err_average = np.abs((left_blur + right_blur) / 2 - sharp)[inner].mean()
    assert err_fused < 0.35 * err_average


def test_mertens_weights_favour_contrast_saturation_and_mid_tones():
    fuser = MertensFuser()
    texture = scene(16, 16, seed=6) - 0.5
    mid, dark = 0.5 + 0.2 * texture, 0.08 + 0.2 * texture
    w = lambda x: fuser.weights(np.repeat(x[None, ..., None], 3, axis=-1) * [1.0, 0.9, 0.8]).mean()
    assert w(mid) > 5 * w(dark)  # well exposed beats under-exposed
    assert w(mid) > 5 * w(0.5 + 0.02 * texture)  # contrast matters
    grey = np.repeat(mid[None, ..., None], 3, axis=-1)
    pale, colourful = grey + np.array([0.03, 0.0, -0.03]), grey + np.array([0.15, 0.0, -0.15])
    assert fuser.weights(colourful).mean() > 2 * fuser.weights(pale).mean()  # saturation matters in colour


def test_mertens_on_grey_pairs_is_exposure_fusion_not_the_average():
    """Grey sources have no saturation term (it is zero everywhere and used to zero every weight,
    which left the pixel average); stored as 1 or as 3 equal channels, the result is the same."""
    texture = scene(48, 48, seed=8) - 0.5
    under, over = 0.1 + 0.15 * texture, 0.5 + 0.3 * texture  # the over source is well exposed here
    fuser = MertensFuser()
    one = fuser.fuse(under, over)[..., 0]
    three = fuser.fuse(*(np.repeat(x[..., None], 3, axis=-1) for x in (under, over)))
    np.testing.assert_allclose(three, np.repeat(one[..., None], 3, axis=-1), atol=1e-6)
    average = (under + over) / 2
    assert np.abs(one - over).mean() < 0.5 * np.abs(average - over).mean()


def test_mertens_weighs_a_colour_and_a_grey_source_alike():
    """Visible (colour) + infrared (grey): neither source gets a saturation term, so the colour one
    is not scaled down by its (small) saturation and the same content weighs the same in both."""
    texture = scene(48, 48, seed=9)
    colour = np.stack([texture, 0.95 * texture, 0.9 * texture], axis=-1)  # little saturation
    luminance = (colour @ np.array([0.299, 0.587, 0.114]))[..., None]
    shares = MertensFuser()
    wa = shares.weights(colour[None], grey=True)
    wb = shares.weights(luminance[None], grey=True)
    np.testing.assert_allclose(wa, wb, rtol=1e-9)
    # sharp colour + a blurred grey copy: the sharp source carries the contrast and wins (weighed
    # with its saturation of ~0.04, as before, it lost to the blur)
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(luminance[..., 0], 2.0)
    fused = shares.fuse(colour, blurred)
    fused_luminance = fused @ np.array([0.299, 0.587, 0.114])
    assert np.abs(fused_luminance - luminance[..., 0]).mean() < 0.5 * np.abs(fused_luminance - blurred).mean()


def test_mertens_takes_the_only_informative_source():
    truth = scene(48, 48, seed=7)
    black = np.zeros_like(truth)  # no contrast, badly exposed: weight ~ 0 everywhere
    np.testing.assert_allclose(MertensFuser().fuse(black, truth)[..., 0], truth, atol=2e-3)


def test_bad_options_and_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown baseline"):
        get_baseline("median")
    with pytest.raises(ValueError, match="levels"):
        LaplacianFuser(levels=0)
    with pytest.raises(ValueError, match="differ in size"):
        get_baseline("average").fuse(np.zeros((4, 4)), np.zeros((4, 5)))
