"""Prompt-guided reconstruction: the prompt-weighted choose-max over Laplacian pyramids of the
source pixels and its use by the fuser (`reconstruction="guided"`)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tcmoa.guided import TASK_RULES, SelectionRule, guided_fusion, selection_rule
from tcmoa.inference import TCMoAFuser, load_fuser, random_model
from tcmoa.baselines import LaplacianFuser
from tcmoa.pyramid import rgb_to_ycbcr, select, select_torch

LUMA = np.array([0.299, 0.587, 0.114])


def _images(channels: int = 3, size: tuple[int, int] = (96, 128), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(rng.random((1, *size, channels)) for _ in range(2))


def test_a_dominant_source_is_kept_exactly_and_equal_shares_give_the_laplacian_baseline():
    a, b = _images()
    ones = np.ones((1, *a.shape[1:3]))
    np.testing.assert_allclose(guided_fusion(a, b, ones), a, atol=1e-6)
    np.testing.assert_allclose(guided_fusion(a, b, 0 * ones), b, atol=1e-6)
    np.testing.assert_allclose(guided_fusion(a, b, 0.5 * ones), LaplacianFuser().fuse_batch(a, b).image, atol=1e-6)


def test_the_shares_decide_between_competing_details_and_set_the_base():
    # A has a strong edge, B a weaker one in the same place: equal shares keep A's (max-abs);
    # a share leaning to B far enough keeps B's, and the base follows the shares.
    a = np.zeros((1, 64, 64, 1)); a[:, :, 32:] = 0.8
    b = np.full((1, 64, 64, 1), 0.5); b[:, :, 32:] = 0.7
    edge = lambda x: float(x[0, 32, 33, 0] - x[0, 32, 30, 0])
    # (an edge's coarsest part lives in the mixed base level, so "kept" means mostly, not exactly)
    assert edge(guided_fusion(a, b, np.full((1, 64, 64), 0.5))) > 0.7 * edge(a)
    leaning_b = guided_fusion(a, b, np.full((1, 64, 64), 0.1))
    assert edge(leaning_b) < 1.3 * edge(b)
    assert abs(float(leaning_b.mean()) - float(0.1 * a.mean() + 0.9 * b.mean())) < 0.02


def test_where_one_source_dominates_a_region_the_output_there_is_its_pixels():
    from tcmoa.pyramid import laplacian_pyramid

    a, b = _images(size=(128, 256))
    weight = np.zeros((1, 128, 256))
    weight[..., :128] = 1.0
    fused = guided_fusion(a, b, weight, levels=4)
    margin = 48  # beyond the reach of the detail levels (8 px x their blur and upsampling)
    # the finest detail levels there are the dominant source's own (to the leak of the smooth base
    # into a re-decomposition, and float32) ...
    for f, x, y in zip(laplacian_pyramid(fused, 4)[:2], laplacian_pyramid(a, 4), laplacian_pyramid(b, 4)):
        scale = a.shape[1] // f.shape[1]
        np.testing.assert_allclose(f[:, :, : (128 - margin) // scale], x[:, :, : (128 - margin) // scale], atol=1e-3)
        np.testing.assert_allclose(f[:, :, (128 + margin) // scale:], y[:, :, (128 + margin) // scale:], atol=1e-3)
    # ... and the pixels are, up to the spline's coarsest bands: a small fraction of the sources' difference
    far_a, far_b = slice(0, 128 - margin), slice(128 + margin, None)
    assert np.abs(fused[:, :, far_a] - a[:, :, far_a]).mean() < 0.02 * np.abs(a - b).mean()
    assert np.abs(fused[:, :, far_b] - b[:, :, far_b]).mean() < 0.02 * np.abs(a - b).mean()
    seam = fused[:, :, 120:136]  # in between: a blend, not a copy of either
    assert np.abs(seam - a[:, :, 120:136]).max() > 1e-3 and np.abs(seam - b[:, :, 120:136]).max() > 1e-3


def _bracket(size: int = 256):
    x = np.linspace(0, 1, size)
    scene = (0.5 + 0.25 * np.sin(6 * x)[:, None] * np.cos(5 * x)[None, :])[None, ..., None]
    return 0.3 * scene, np.clip(0.4 + scene, 0, 1)


def test_shares_that_change_between_regions_leave_no_steps_in_a_bracket():
    """An exposure bracket (one smooth scene, dark and bright) under shares that flip every 32
    pixels: the base is blended as a multiresolution spline, so the flips draw no steps (about as
    little variation as the pixel average has), where mixing the base level by the shares directly
    draws the checkerboard into the image."""
    from tcmoa.pyramid import collapse, gaussian_pyramid, laplacian_pyramid

    dark, bright = _bracket()
    checker = ((np.arange(256) // 32)[:, None] + (np.arange(256) // 32)[None, :]) % 2
    weight = 0.2 + 0.6 * checker[None].astype(float)
    variation = lambda img: float(np.abs(np.diff(img[0, :, :, 0], axis=1)).mean())
    fused = guided_fusion(dark, bright, weight)
    assert variation(fused) < 1.2 * variation((dark + bright) / 2)
    w, la, lb = gaussian_pyramid(weight[..., None], 4), laplacian_pyramid(dark, 4), laplacian_pyramid(bright, 4)
    stepped = collapse(la[:-1] + [w[-1] * la[-1] + (1 - w[-1]) * lb[-1]])
    assert variation(stepped) > 3 * variation((dark + bright) / 2)


def test_a_region_where_the_sources_agree_stays_as_it_is():
    """A scan on a background black in both sources (a head in MRI and CT), shares that vary token
    by token: the background stays exactly black; a spline alone would lift it near the scan by its
    image-wide coarse bands (the zero-shot MRI_CT failure in docs/model-card.md)."""
    rng = np.random.default_rng(7)
    a, b = np.zeros((1, 256, 256, 1)), np.zeros((1, 256, 256, 1))
    a[:, 96:160, 96:160] = 0.6 + 0.4 * rng.random((1, 64, 64, 1))
    b[:, 96:160, 96:160] = 0.2 * rng.random((1, 64, 64, 1))
    weight = (0.2 + 0.6 * rng.random((1, 32, 32))).repeat(8, 1).repeat(8, 2)
    fused = guided_fusion(a, b, weight)
    background = np.ones((256, 256), bool)
    background[80:176, 80:176] = False  # 16 px beyond the scan
    assert np.abs(fused[0][background]).max() < 1e-6


def test_grey_and_colour_fuse_in_luminance_with_the_colour_sources_chroma():
    colour, grey = _images(3, seed=1)
    colour, grey = colour * 0.3 + 0.35, grey[..., :1] * 0.4 + 0.3  # ranges that keep the result in [0, 1]
    weight = np.full((1, *colour.shape[1:3]), 0.3)
    fused = guided_fusion(colour, grey, weight)
    assert fused.shape == colour.shape
    np.testing.assert_allclose(rgb_to_ycbcr(fused)[..., 1:], rgb_to_ycbcr(colour)[..., 1:], atol=1e-5)
    y_colour = (colour @ LUMA)[..., None]
    np.testing.assert_allclose(fused @ LUMA, select(y_colour, grey, weight[..., None], 4)[..., 0], atol=1e-5)
    # the colour source alone gives back its pixels
    np.testing.assert_allclose(guided_fusion(colour, grey, np.ones_like(weight)), colour, atol=1e-5)


def test_grey_stored_as_three_equal_channels_counts_as_grey():
    colour, grey = _images(3, seed=3)
    colour, grey = colour * 0.3 + 0.35, grey[..., :1] * 0.4 + 0.3
    as_rgb = np.repeat(grey, 3, axis=-1)
    zero = np.zeros((1, *colour.shape[1:3]))
    np.testing.assert_allclose(guided_fusion(colour, as_rgb, zero), guided_fusion(colour, grey, zero), atol=1e-6)
    # all of the grey source's luminance, the colour source's chroma
    np.testing.assert_allclose(guided_fusion(colour, as_rgb, zero) @ LUMA, grey[..., 0], atol=1e-5)


def test_the_training_twin_tends_to_the_selection_and_passes_gradients():
    import torch

    rng = np.random.default_rng(5)
    a, b, w = rng.random((2, 100, 130, 3)), rng.random((2, 100, 130, 3)), rng.random((2, 100, 130, 1))
    as_torch = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)
    for window, by_activity, gain, power in ((1, False, 0.0, 1.0), (7, False, 0.0, 1.0), (1, True, 0.0, 1.0),
                                             (1, True, 0.0, 3.0), (1, False, 0.5, 1.0)):
        hard = select(a, b, w, 4, window, by_activity, gain, power)
        errors = [np.abs(select_torch(as_torch(a), as_torch(b), as_torch(w), 4, temperature=t, window=window,
                                      base_by_activity=by_activity, detail_gain=gain, base_power=power)
                         .permute(0, 2, 3, 1).numpy() - hard).mean()
                  for t in (0.1, 1e-2, 1e-5)]
        assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4
    # a soft choice is its own twin: the same weights at any temperature
    soft = select(a, b, w, 4, base_by_activity=True, detail_power=4.0)
    twin = select_torch(as_torch(a), as_torch(b), as_torch(w), 4, base_by_activity=True, detail_power=4.0)
    np.testing.assert_allclose(twin.permute(0, 2, 3, 1).numpy(), soft, atol=1e-9)
    weight = as_torch(w).requires_grad_()
    select_torch(as_torch(a), as_torch(b), weight, 4).sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_area_activity_follows_the_sharp_source_region_by_region_through_noise():
    """A multi-focus pair (each source blurred on one half) with sensor noise: per pixel, the noise
    in the blurred half wins many fine coefficients; averaged over a window, the sharp source wins
    its whole region, so the fusion is closer to the all-in-focus image."""
    from scipy import ndimage
    from skimage import data

    sharp = data.camera()[::2, ::2].astype(np.float64) / 255
    blurred = ndimage.gaussian_filter(sharp, 2.0)
    half = sharp.shape[1] // 2
    rng = np.random.default_rng(0)
    a = np.concatenate([sharp[:, :half], blurred[:, half:]], axis=1) + rng.normal(0, 0.01, sharp.shape)
    b = np.concatenate([blurred[:, :half], sharp[:, half:]], axis=1) + rng.normal(0, 0.01, sharp.shape)
    equal = np.full((1, *sharp.shape, 1), 0.5)
    window = TASK_RULES["mff"].window
    errors = {k: np.abs(select(a[None, ..., None], b[None, ..., None], equal, 4, k)[0, ..., 0] - sharp).mean()
              for k in (1, window)}
    assert errors[window] < 0.9 * errors[1]


def test_a_base_chosen_by_activity_keeps_a_thermal_targets_contrast():
    """Visible + infrared: a warm target (a bright disc) on a flat infrared background, where the
    visible image has texture elsewhere. Mixing the bases halves the target's contrast; choosing
    the locally more contrasted base keeps it, and keeps the visible texture where it is."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:128, :128]
    infrared = 0.3 + 0.5 * ((yy - 40) ** 2 + (xx - 40) ** 2 < 15 ** 2)
    visible = 0.5 + 0.2 * ndimage.gaussian_filter(rng.normal(size=(128, 128)), 6) / 0.05 * (xx > 80)
    visible = np.clip(visible, 0, 1)
    a, b = visible[None, ..., None], infrared[None, ..., None]
    equal = np.full((1, 128, 128, 1), 0.5)
    mixed, chosen = select(a, b, equal, 4), select(a, b, equal, 4, base_by_activity=True)
    target, around = (yy - 40) ** 2 + (xx - 40) ** 2 < 8 ** 2, ((yy - 40) ** 2 + (xx - 40) ** 2 > 25 ** 2) & (xx < 70)
    contrast = lambda f: f[0, ..., 0][target].mean() - f[0, ..., 0][around].mean()
    assert contrast(chosen) > 0.4 > contrast(mixed)  # the infrared disc is +0.5 over its background
    texture = xx > 90
    assert np.std(chosen[0, ..., 0][texture]) > 0.9 * np.std(visible[texture])
    # a full share still gives that source exactly, flat regions included (hard or soft choice)
    for power in (0.0, 2.0):
        np.testing.assert_allclose(select(a, b, np.ones_like(equal), 4, base_by_activity=True, detail_power=power),
                                   a, atol=1e-10)
        np.testing.assert_allclose(select(a, b, np.zeros_like(equal), 4, base_by_activity=True, detail_power=power),
                                   b, atol=1e-10)


def test_a_detail_gain_keeps_a_dark_exposures_contrast_relative_to_the_fused_brightness():
    """An exposure bracket: texture only the dark exposure resolves (the bright one is clipped
    flat there). With equal shares the fused base is twice as bright as the dark source, so its
    detail copied as it is keeps half its contrast relative to the local brightness; the gain
    (m_fused / m_source) ** p gives it back in part (p < 1) or whole (p = 1)."""
    from scipy import ndimage

    rng = np.random.default_rng(4)
    texture = ndimage.gaussian_filter(rng.normal(size=(128, 128)), 1.5)
    dark = (0.3 + 0.05 * texture / texture.std())[None, ..., None]
    bright = np.full_like(dark, 0.9)
    equal = np.full_like(dark, 0.5)
    relative = lambda f: np.std(f - ndimage.gaussian_filter(f, 4)) / f.mean()
    inner = (slice(None), slice(16, -16), slice(16, -16), 0)  # away from the pyramid's borders
    source = relative(dark[inner])
    kept = {p: relative(select(dark, bright, equal, 4, detail_gain=p)[inner]) / source for p in (0.0, 0.125, 1.0)}
    assert kept[0.0] < 0.6 and kept[0.0] < kept[0.125] < kept[1.0] and 0.85 < kept[1.0] < 1.15
    # a full share still gives that source exactly
    for p in (0.125, 1.0):
        np.testing.assert_allclose(select(dark, bright, np.ones_like(equal), 4, detail_gain=p), dark, atol=1e-10)
        np.testing.assert_allclose(select(dark, bright, np.zeros_like(equal), 4, detail_gain=p), bright, atol=1e-10)


def test_a_soft_detail_choice_keeps_more_of_both_sources_where_their_detail_is_alike():
    """Two independent textures of equal strength: the hard choice takes each coefficient from one
    source, so the fusion follows each source less than their average would; a soft choice
    (score^k weights) follows both more, the more the smaller k."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    textures = [ndimage.gaussian_filter(rng.normal(size=(128, 128)), 1.0) for _ in range(2)]
    a, b = ((0.5 + 0.1 * t / t.std())[None, ..., None] for t in textures)
    equal = np.full_like(a, 0.5)
    follows = lambda f: sum(np.corrcoef(f.ravel(), x.ravel())[0, 1] for x in (a, b))
    hard, soft4, soft2 = (follows(select(a, b, equal, 4, detail_power=k)) for k in (0.0, 4.0, 2.0))
    assert hard < soft4 < soft2 < np.sqrt(2) + 1e-9  # the average follows both by 1/sqrt(2) each


def test_the_selection_rule_is_the_dominant_tasks():
    import torch

    assert (selection_rule(torch.tensor([0.0, 0.0, 1.0])) == TASK_RULES["mff"]
            == SelectionRule(window=9, detail_power=8.0))
    assert selection_rule(torch.tensor([0.2, 0.0, 0.8])) == TASK_RULES["mff"]
    assert selection_rule(torch.tensor([1.0, 0.0, 0.0])) == SelectionRule(base_by_activity=True, detail_power=8.0)
    assert selection_rule(torch.tensor([0.0, 1.0, 0.0])) == TASK_RULES["mef"] == SelectionRule(detail_gain=0.125)
    assert selection_rule(torch.tensor([0.5, 0.0, 0.5])) == SelectionRule()  # no dominant task: the plain rule


@pytest.fixture(scope="module")
def guided_fuser():
    return TCMoAFuser(random_model("tiny"), reconstruction="guided")


def test_fuser_guided_by_prompts_forced_to_a_returns_source_a(guided_fuser):
    rng = np.random.default_rng(0)
    a, b = rng.random((100, 130, 3), dtype=np.float32), rng.random((100, 130), dtype=np.float32)
    guided_fuser.alpha, guided_fuser.beta = 0.0, 0.5  # p_A' = 1, p_B' = 0 everywhere (paper Eq. 8)
    try:
        np.testing.assert_allclose(guided_fuser.fuse(a, b, "vif"), a, atol=1e-5)
        guided_fuser.beta = 0.0  # p_A' = p_B' = 0.5: the classical Laplacian-pyramid fusion (plain rule)
        grey_a, grey_b = rng.random((100, 130), dtype=np.float32), rng.random((100, 130), dtype=np.float32)
        mix = {"vif": 0.5, "mef": 0.5}  # a router with no dominant task: the plain rule
        np.testing.assert_allclose(guided_fuser.fuse(grey_a, grey_b, mix),
                                   LaplacianFuser().fuse(grey_a, grey_b)[..., 0], atol=1e-5)
    finally:
        guided_fuser.alpha, guided_fuser.beta = 1.0, 0.0


def test_fuser_guided_output_follows_the_prompt_map(guided_fuser):
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 112, 112, 1), dtype=np.float32), rng.random((2, 112, 112, 1), dtype=np.float32)
    for task in ("vif", "mef", "mff"):  # each task's selection rule
        result = guided_fuser.fuse_batch(a, b, task, return_prompts=True)
        assert result.image.shape == (2, 112, 112, 1) and result.prompt_map.shape == (2, 112, 112)
        rule = TASK_RULES[task]
        expected = select(a.astype(np.float64), b.astype(np.float64), result.prompt_map[..., None], 4,
                          **dataclasses.asdict(rule))
        np.testing.assert_allclose(result.image, np.clip(expected, 0, 1), atol=1e-5)
    assert guided_fuser.provenance()["reconstruction"] == "guided"


def test_load_fuser_takes_the_reconstruction_and_rejects_unknown_ones():
    assert load_fuser("random:tiny", reconstruction="guided").reconstruction == "guided"
    assert load_fuser("random:tiny").reconstruction == "decoder"  # auto, and no file to recommend a mode
    with pytest.raises(ValueError, match="reconstruction must be one of"):
        load_fuser("random:tiny", reconstruction="pyramid")


def test_auto_reconstruction_is_the_mode_the_weights_file_recommends(tmp_path):
    """`tcmoa export --reconstruction guided` records the mode; `auto` (every command's default) uses
    it, planning sees it from the file's header alone, and an explicit mode still wins."""
    from tcmoa.checkpoints import save_model
    from tcmoa.inference import model_info, random_model

    plain, guided = tmp_path / "plain.safetensors", tmp_path / "guided.safetensors"
    save_model(random_model("tiny"), plain, {"trained": False})
    save_model(random_model("tiny"), guided, {"trained": False, "reconstruction": "guided"})
    assert load_fuser(str(plain)).reconstruction == "decoder" and model_info(str(plain)).reconstruction == "decoder"
    assert load_fuser(str(guided)).reconstruction == "guided" and model_info(str(guided)).reconstruction == "guided"
    assert load_fuser(str(guided), reconstruction="decoder").reconstruction == "decoder"
    rng = np.random.default_rng(3)
    a, b = rng.random((112, 112), dtype=np.float32), rng.random((112, 112), dtype=np.float32)
    np.testing.assert_array_equal(load_fuser(str(guided)).fuse(a, b, "mff"),
                                  load_fuser(str(plain), reconstruction="guided").fuse(a, b, "mff"))
