"""Synthetic multi-focus and multi-exposure pairs."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import laplace
from skimage.transform import resize

from tcmoa import synth


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return resize(synth.skimage_photos(["astronaut"])[0], (160, 160), anti_aliasing=True).astype(np.float32)


def _sharpness(image: np.ndarray) -> float:
    return float(laplace(image.mean(axis=-1)).var())


def test_disc_psf_is_a_normalised_round_aperture():
    psf = synth.disc_psf(4.0)
    assert psf.shape == (9, 9)
    assert psf.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(psf, psf.T)
    np.testing.assert_allclose(psf, psf[::-1, ::-1])
    assert psf[4, 4] == pytest.approx(psf[4, 1])  # flat inside the aperture, unlike a gaussian
    assert psf[0, 0] == 0.0  # corners lie outside the disc


def test_defocus_removes_detail_and_keeps_linear_brightness(photo):
    blurred = synth.defocus(photo, 5.0)
    assert blurred.shape == photo.shape and blurred.dtype == np.float32
    assert _sharpness(blurred) < 0.2 * _sharpness(photo)
    assert np.mean(blurred**2.2) == pytest.approx(np.mean(photo.astype(np.float64) ** 2.2), rel=0.02)


def test_mff_pair_has_complementary_focus(photo):
    pair = synth.synth_mff_pair(photo, np.random.default_rng(3))
    far = pair.mask > 0.999
    near = pair.mask < 0.001
    assert far.mean() > 0.15 and near.mean() > 0.15, "both depth layers must cover part of the frame"
    # A is sharp (equal to the photo) on the far layer and blurred on the near one; B the reverse.
    np.testing.assert_allclose(pair.a[far], pair.target[far], atol=1e-3)
    np.testing.assert_allclose(pair.b[near], pair.target[near], atol=1e-3)
    assert np.abs(pair.a[near] - pair.target[near]).mean() > 0.01
    assert np.abs(pair.b[far] - pair.target[far]).mean() > 0.01
    # The mask is smooth: its transition is a few pixels wide, not a hard step everywhere.
    assert ((pair.mask > 0.05) & (pair.mask < 0.95)).any()


def test_mef_pair_is_over_and_under_exposed_8bit_with_noise(photo):
    pair = synth.synth_mef_pair(photo, np.random.default_rng(4))
    assert pair.a.mean() > photo.mean() > pair.b.mean()
    assert (pair.a >= 1.0).mean() > (photo >= 1.0).mean()  # highlights clip in the long exposure
    for image in (pair.a, pair.b):
        np.testing.assert_allclose(image * 255, np.round(image * 255), atol=1e-4)
    # Noise: a second capture of the same scene and settings differs.
    again = synth.synth_mef_pair(photo, np.random.default_rng(5))
    assert not np.array_equal(pair.b, again.b)


def test_camera_response_is_monotone_from_black_to_white():
    respond = synth.camera_response(2.2, 0.4)
    x = np.linspace(0, 1, 1001)
    y = respond(x)
    assert y[0] == 0.0 and y[-1] == pytest.approx(1.0)
    assert np.all(np.diff(y) >= 0)


def test_synthetic_pairs_are_reproducible_and_vary_by_index(photo):
    pairs = synth.SyntheticPairs("mff", [photo], count=3, seed=7)
    a0, b0, name0 = pairs.load(0)
    a0_again, _, _ = synth.SyntheticPairs("mff", [photo], count=3, seed=7).load(0)
    a1, _, _ = pairs.load(1)
    assert np.array_equal(a0, a0_again)
    assert not np.array_equal(a0, a1)
    assert len(pairs) == 3 and name0 == "synthetic-mff-00000"
    with pytest.raises(IndexError):
        pairs.load(3)
    with pytest.raises(ValueError, match="synthetic pairs exist for"):
        synth.SyntheticPairs("vif", [photo])


def test_folder_photos_reads_by_content_and_shrinks(tmp_path, photo):
    # JPEG data behind a .png name, and a grey photo: both must load as RGB.
    Image.fromarray((photo * 255).astype(np.uint8)).save(tmp_path / "colour.png", format="JPEG")
    Image.fromarray((photo[..., 0] * 255).astype(np.uint8)).save(tmp_path / "grey.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    photos = synth.folder_photos(tmp_path, max_side=80)
    assert [p.shape for p in photos] == [(80, 80, 3), (80, 80, 3)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        synth.folder_photos(tmp_path / "empty")
