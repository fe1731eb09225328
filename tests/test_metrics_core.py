"""Textbook properties of the core metrics on synthetic images, presets and the public API."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tcmoa.metrics import PRESETS, REGISTRY, Convention, evaluate, get_convention, list_metrics, prepare
from tcmoa.metrics.perception import freq_radius
from tcmoa.metrics.prepare import RGB_TO_GREY, round_half_up

CORE = ["EN", "SD", "SF", "AG", "EI", "CE", "PSNR", "RMSE", "MI", "SSIM", "Qabf", "Nabf", "Qcb", "Qcv"]


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth textured uint8 scene and two degraded versions of it (48x64)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    base = 128 + 60 * np.sin(x / 5.0) * np.cos(y / 7.0) + rng.normal(0, 8, (48, 64))
    a = np.clip(base, 0, 255).astype(np.uint8)
    b = np.clip(base * 0.6 + 40 + rng.normal(0, 15, base.shape), 0, 255).astype(np.uint8)
    f = np.clip((a.astype(float) + b) / 2, 0, 255).astype(np.uint8)
    return f, a, b


def two_level(h: int = 32, w: int = 32) -> np.ndarray:
    img = np.zeros((h, w), np.uint8)
    img[:, w // 2 :] = 255
    return img


def test_every_metric_is_described():
    specs = list_metrics()
    names = {s.name for s in specs}
    assert set(CORE) <= names
    for spec in specs:
        assert isinstance(spec.higher_is_better, bool)
        assert len(spec.description) > 20
    assert not REGISTRY["CE"].higher_is_better and not REGISTRY["RMSE"].higher_is_better
    assert not REGISTRY["Qcv"].higher_is_better and not REGISTRY["Nabf"].higher_is_better
    assert REGISTRY["Qabf"].higher_is_better and REGISTRY["MI"].higher_is_better


def test_presets_name_their_conventions():
    assert {"standard", "vifb", "mefb"} <= set(PRESETS)
    vifb, mefb, std = PRESETS["vifb"], PRESETS["mefb"], PRESETS["standard"]
    assert vifb.param("MI", "log_base") == "e" and vifb.param("EN", "log_base") == 2
    assert vifb.psnr == mefb.psnr == "benchmark" and std.psnr == "standard"
    assert vifb.source_reduce == "sum" and std.param("SSIM", "source_reduce") == "mean"
    assert std.param("MI", "source_reduce") == "sum"
    assert vifb.table_name("SD") == "Variance" and mefb.table_name("SD") == "SD"
    assert get_convention(vifb) is vifb
    with pytest.raises(ValueError, match="unknown metric preset"):
        get_convention("nope")


def test_entropy_of_two_level_and_uniform_images():
    img = two_level()
    assert evaluate(img, img, img, ["EN"], "standard")["EN"] == pytest.approx(1.0)
    nats = Convention("nats", log_base="e")
    assert evaluate(img, img, img, ["EN"], nats)["EN"] == pytest.approx(math.log(2))
    flat = np.full((16, 16), 77, np.uint8)
    assert evaluate(flat, flat, flat, ["EN"], "standard")["EN"] == 0.0


def test_standard_deviation_and_flat_image_statistics():
    img = two_level()
    assert evaluate(img, img, img, ["SD"], "standard")["SD"] == pytest.approx(127.5)
    flat = np.full((16, 20), 90, np.uint8)
    scores = evaluate(flat, flat, flat, ["SD", "SF", "AG", "EI"], "standard")
    assert scores == {"SD": 0.0, "SF": 0.0, "AG": 0.0, "EI": 0.0}


def test_average_gradient_of_a_ramp():
    h, w, slope = 12, 20, 3.0
    ramp = np.tile(np.arange(w) * slope, (h, 1)).astype(np.uint8)
    expected = slope / math.sqrt(2) * h * w / ((h - 1) * (w - 1))
    assert evaluate(ramp, ramp, ramp, ["AG"], "standard")["AG"] == pytest.approx(expected)
    # The spatial frequency of the same ramp: only row differences, (w-1)/w of the pixels.
    sf = math.sqrt(slope**2 * h * (w - 1) / (h * w))
    assert evaluate(ramp, ramp, ramp, ["SF"], "standard")["SF"] == pytest.approx(sf)


def test_psnr_and_rmse_known_values():
    a = np.full((10, 10), 100, np.uint8)
    f = a + np.uint8(10)
    std = evaluate(f, a, a, ["PSNR", "RMSE"], "standard")
    assert std["PSNR"] == pytest.approx(10 * math.log10(255**2 / 100))
    assert std["RMSE"] == pytest.approx(10.0)
    bench = evaluate(f, a, a, ["PSNR", "RMSE"], "vifb")
    mse = math.sqrt(100 * 100) / 100  # sqrt(sum of squares) / (M N)
    assert bench["RMSE"] == pytest.approx(mse)
    assert bench["PSNR"] == pytest.approx(20 * math.log10(255 / math.sqrt(mse)))
    same = evaluate(a, a, a, ["PSNR", "RMSE"], "standard")
    assert same["PSNR"] == math.inf and same["RMSE"] == 0.0


@pytest.mark.parametrize("preset", ["standard", "vifb"])
def test_identity(scene, preset):
    f, _, _ = scene
    s = evaluate(f, f, f, CORE, preset)
    reduce = 2 if preset == "vifb" else 1
    assert s["SSIM"] == pytest.approx(reduce * 1.0)
    assert s["CE"] == 0.0 and s["RMSE"] == 0.0 and s["Qcv"] == 0.0 and s["Nabf"] == 0.0
    assert s["Qcb"] == pytest.approx(1.0)
    # The toolbox Qabf caps the preserved orientation term at Ta / (1 + exp(-ka (1 - Da))).
    assert s["Qabf"] == pytest.approx(0.9994 * 0.9879 / (1 + math.exp(-22 * 0.2)), rel=2e-3)
    en = evaluate(f, f, f, ["EN"], "standard")["EN"]
    if preset == "standard":
        assert s["MI"] == pytest.approx(2 * en)  # I(F;F) = H(F), summed over the two sources


def test_mutual_information_in_nats_after_minmax():
    img = two_level()
    scaled = (img // 255 * 100 + 50).astype(np.uint8)  # levels 50 and 150: min-max maps them to 0, 255
    vifb = evaluate(img, scaled, img, ["MI"], "vifb")["MI"]
    assert vifb == pytest.approx(2 * math.log(2))
    std = evaluate(img, scaled, img, ["MI"], "standard")["MI"]
    assert std == pytest.approx(2.0)  # bits, no normalisation needed for a bijective relabelling


@pytest.mark.parametrize("name", ["CE", "PSNR", "RMSE", "MI", "SSIM", "Qabf", "Nabf", "Qcb", "Qcv"])
def test_symmetric_in_the_sources(scene, name):
    f, a, b = scene
    for preset in ("standard", "vifb"):
        assert evaluate(f, a, b, [name], preset)[name] == pytest.approx(evaluate(f, b, a, [name], preset)[name])


def test_better_fusion_scores_better(scene):
    f, a, b = scene
    noisy = np.clip(f + np.random.default_rng(1).normal(0, 40, f.shape), 0, 255).astype(np.uint8)
    good, bad = evaluate(f, a, b, CORE, "vifb"), evaluate(noisy, a, b, CORE, "vifb")
    for name in ("SSIM", "Qabf", "Qcb", "PSNR"):
        assert good[name] > bad[name], name
    for name in ("RMSE", "Qcv", "Nabf"):
        assert good[name] < bad[name], name


def test_colour_channels_are_averaged(scene):
    f, a, b = scene
    rgb = [np.repeat(x[..., None], 3, axis=2) for x in (f, a, b)]
    grey_scores = evaluate(f, a, b, CORE, "mefb")
    rgb_scores = evaluate(*rgb, CORE, "mefb")
    for name in CORE:
        assert rgb_scores[name] == pytest.approx(grey_scores[name], rel=1e-12), name
    # A grey source is used against every channel of an RGB fused image.
    assert evaluate(rgb[0], rgb[1], b, CORE, "vifb") == pytest.approx(evaluate(*rgb, CORE, "vifb"))


def test_vifb_spatial_frequency_runs_over_the_channels_side_by_side():
    rng = np.random.default_rng(3)
    f = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    side = np.concatenate([f[..., k] for k in range(3)], axis=1).astype(float)
    m, n = side.shape
    rf = (np.diff(side, axis=1) ** 2).sum() / (m * n)
    cf = (np.diff(side, axis=0) ** 2).sum() / (m * n)
    assert evaluate(f, f, f, ["SF"], "vifb")["SF"] == pytest.approx(math.sqrt(rf + cf))
    per_channel = evaluate(f, f, f, ["SF"], "mefb")["SF"]
    assert per_channel != pytest.approx(math.sqrt(rf + cf))


def test_preparation_rules():
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    # Grey fused image, RGB sources: sources pass through rgb2gray (rounded).
    f, a, b = prepare(grey, rgb, rgb, get_convention("vifb"))
    assert f.shape == a.shape == (6, 7)
    np.testing.assert_array_equal(a, round_half_up(rgb @ RGB_TO_GREY))
    # RGB fused image, grey sources: MEFB keeps the first channel, VIFB every channel.
    assert prepare(rgb, grey, grey, get_convention("mefb"))[0].shape == (6, 7)
    np.testing.assert_array_equal(prepare(rgb, grey, grey, get_convention("mefb"))[0], rgb[..., 0])
    assert prepare(rgb, grey, grey, get_convention("vifb"))[0].shape == (6, 7, 3)
    # Floats in [0, 1] are the same image as their uint8 levels.
    assert evaluate(rgb / 255.0, grey / 255.0, grey, CORE[:9], "vifb") == pytest.approx(
        evaluate(rgb, grey, grey, CORE[:9], "vifb")
    )


def test_bad_inputs_are_refused():
    img = two_level()
    with pytest.raises(ValueError, match="sizes differ"):
        evaluate(img, img[:-1], img, ["EN"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(img.astype(float) * 2, img, img, ["EN"])
    with pytest.raises(KeyError, match="unknown metric"):
        evaluate(img, img, img, ["NoSuchMetric"])
    with pytest.raises(ValueError, match="channels|shape"):
        evaluate(np.zeros((4, 4, 2), np.uint8), img[:4, :4], img[:4, :4], ["EN"])


def test_aliases_and_table_names(scene):
    f, a, b = scene
    by_alias = evaluate(f, a, b, "Variance,Mutinf,Psnr", "vifb")
    assert set(by_alias) == {"SD", "MI", "PSNR"}
    tables = evaluate(f, a, b, ["SD", "MI"], "vifb", names="table")
    assert set(tables) == {"Variance", "Mutinf"}
    assert tables["Variance"] == by_alias["SD"]


def test_freqspace_grid_matches_matlab():
    # freqspace(N) = ((0:N-1) - floor(N/2)) * 2/N for even and odd N; zero at index floor(N/2).
    r = freq_radius(5, 4, 1.0, 1.0)
    assert r[2, 2] == 0.0
    assert r[2, 0] == pytest.approx(1.0) and r[0, 2] == pytest.approx(0.8)


def test_threaded_evaluate_with_shared_intermediates_equals_one_metric_at_a_time():
    """All metrics at once on threads (sharing Piella maps, Yang moments) give the values each
    metric gives alone: sharing changes no number and nothing leaks between calls."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:180, 0:200]  # MS-SSIM needs 176 px a side
    scene = 120 + 50 * np.sin(x / 7.0) * np.cos(y / 5.0)
    a = np.clip(np.stack([scene, scene * 0.9, scene * 0.8], -1) + rng.normal(0, 8, (180, 200, 3)), 0, 255).astype(np.uint8)
    b = np.clip(255 - scene + rng.normal(0, 8, (180, 200)), 0, 255).astype(np.uint8)
    f = ((a.astype(np.float64) + b[..., None]) / 2).astype(np.uint8)
    for preset in ("standard", "mefb"):
        together = evaluate(f, a, b, preset=preset, threads=3)
        alone = {name: evaluate(f, a, b, [name], preset, threads=1)[name] for name in together}
        for name in together:
            assert together[name] == pytest.approx(alone[name], rel=1e-12, nan_ok=True), name
