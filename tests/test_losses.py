"""The reference training losses: golden-fixture parity and properties that pin each piece."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from tcmoa import losses
from tests.conftest import shared_path

TASK_NAMES = ("VIF", "MEF", "MFF")


@pytest.fixture(scope="module")
def fixture():
    return torch.load(shared_path("fixtures", "tcmoa_tiny_seed0_224.pt"))


@pytest.mark.shared_data
@pytest.mark.parametrize("task", TASK_NAMES)
@pytest.mark.parametrize("epoch", (0, 5))
def test_every_fixture_term_matches(fixture, task, epoch):
    ref_task = fixture["tasks"][task]
    reference = ref_task["losses"][f"epoch{epoch}"]
    got = losses.fixture_loss_terms(
        task, ref_task["fused01"], fixture["A01"], fixture["B01"], ref_task, reference["aux_loss"], epoch
    )
    assert set(got) == set(reference), "reported term names differ from the reference's"
    for name, value in reference.items():
        assert got[name] == pytest.approx(value, rel=1e-5), name


@pytest.mark.shared_data
def test_task_loss_takes_a_model_output_and_is_differentiable(fixture):
    class Output:  # a ModelOutput look-alike: prompts + aux
        pass

    ref_task = fixture["tasks"]["MEF"]
    out = Output()
    for key in ("encoder_prompts_A", "encoder_prompts_B", "decoder_prompts_A", "decoder_prompts_B"):
        setattr(out, key, ref_task[key])
    out.aux_loss = torch.tensor(ref_task["losses"]["epoch5"]["aux_loss"])
    fused = ref_task["fused01"].clone().requires_grad_(True)
    terms = losses.task_loss("mef", fused, fixture["A01"], fixture["B01"], out, epoch=5)
    assert float(terms["loss"].detach()) == pytest.approx(ref_task["losses"]["epoch5"]["loss"], rel=1e-5)
    terms["loss"].backward()
    assert fused.grad is not None and torch.isfinite(fused.grad).all() and fused.grad.abs().sum() > 0


def _images(seed: int, shape=(2, 3, 48, 64)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def test_ssim_identity_symmetry_and_range():
    x, y = _images(0), _images(1)
    assert float(losses.ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(losses.ssim(x, y)) == pytest.approx(float(losses.ssim(y, x)), abs=1e-7)
    assert -1 < float(losses.ssim(x, y)) < 0.2  # independent noise is nearly uncorrelated


def test_signed_gradient_is_the_channel_summed_cross_correlation():
    image = _images(2, (1, 3, 20, 24))
    kernel = np.array(losses._GRAD_KX) + np.array(losses._GRAD_KY)
    expected = sum(
        ndi.correlate(image[0, c].double().numpy(), kernel, mode="constant", cval=0.0) for c in range(3)
    )
    got = losses.signed_gradient(image)[0, 0].double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_max_gradient_keeps_the_sign_and_ties_go_to_a():
    a = _images(3)
    # Equal magnitudes, opposite signs everywhere: the target must be A's gradient.
    b = -a
    fused = _images(4)
    grad_a = losses.signed_gradient(a)
    expected = 3 * (losses.signed_gradient(fused) - grad_a).abs().mean()
    assert float(losses.max_gradient_loss(fused, a, b)) == pytest.approx(float(expected), rel=1e-6)
    assert float(losses.max_gradient_loss(a, a, b)) == pytest.approx(0.0, abs=1e-7)


def test_mff_target_takes_the_sharper_source_per_16px_patch():
    sharp = _images(5, (1, 3, 64, 64))
    flat = torch.full_like(sharp, 0.5)
    left = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    left[..., :32] = True
    a = torch.where(left, sharp, flat)  # A in focus on the left half
    b = torch.where(left, flat, sharp)  # B on the right half
    target = losses.mff_pseudo_target(a, b)
    # Blocks that touch the boundary see an edge in both; interior blocks must pick the sharp one.
    assert torch.equal(target[..., :16], sharp[..., :16])
    assert torch.equal(target[..., 48:], sharp[..., 48:])
    # Identical sources: ties go to A.
    assert torch.equal(losses.mff_pseudo_target(a, a.clone()), a)


def test_mff_target_handles_sides_that_are_not_multiples_of_16():
    a, b = _images(6, (1, 3, 40, 50)), _images(7, (1, 3, 40, 50))
    target = losses.mff_pseudo_target(a, b)
    assert target.shape == a.shape
    assert torch.all((target == a) | (target == b))


def test_mef_ssim_is_one_for_identical_images_and_lower_otherwise():
    x = _images(8)
    assert float(losses.mef_ssim(x, x, x.clone())) == pytest.approx(1.0, abs=1e-5)
    over, under = (x * 1.6).clamp(0, 1), x * 0.4
    assert float(losses.mef_ssim(_images(9), over, under)) < 0.5


def test_prompt_loss_weights_encoder_and_decoder():
    half = torch.full((2, 1, 10, 1), 0.5)
    assert float(losses.prompt_loss(half, half, half, half)) == 0.0
    ones = torch.ones_like(half)
    assert float(losses.prompt_loss(ones, ones, half, half)) == pytest.approx(0.75)
    assert float(losses.prompt_loss(half, half, ones, ones)) == pytest.approx(0.25)


@pytest.mark.parametrize("task", ("vif", "mef", "mff"))
def test_totals_follow_the_reference_weights(task):
    a, b, fused = _images(10), _images(11), _images(12)
    prompts = {
        "encoder_prompts_A": torch.rand(2, 2, 12, 1),
        "encoder_prompts_B": torch.rand(2, 2, 12, 1),
        "decoder_prompts_A": torch.rand(2, 2, 12, 1),
        "decoder_prompts_B": torch.rand(2, 2, 12, 1),
        "aux_loss": torch.tensor(0.3),
    }
    warm = losses.task_loss(task, fused, a, b, prompts, epoch=1)
    main = losses.task_loss(task, fused, a, b, prompts, epoch=3)
    mir, aux_w, aux_m = float(warm["prompt_loss"]), 0.3 / 2, 0.3 / 4
    if task == "vif":
        ssim_avg = float(losses.ssim_average_loss(fused, a, b))
        assert float(warm["loss"]) == pytest.approx(float(warm["pixel_loss"]) + mir + ssim_avg + aux_w, rel=1e-6)
        expected = 1.5 * main["max_grad_loss"] + 1.5 * main["max_pixel_loss"] + mir + 2 * main["ssim_loss"] + aux_m
    elif task == "mef":
        assert float(warm["loss"]) == pytest.approx(
            float(warm["pixel_loss"] + warm["ssim_loss"]) + mir + aux_w, rel=1e-6
        )
        expected = 1.8 * (main["max_grad_loss"] + mir + 2 * main["MEF_SSIM_loss"] + main["pixel_loss"]) + aux_m
    else:
        assert float(warm["loss"]) == pytest.approx(
            float(warm["pixel_loss"] + warm["ssim_loss"]) + mir + aux_w, rel=1e-6
        )
        expected = 20 * (main["max_grad_loss"] + main["pixel_loss"]) + mir + 3 * main["ssim_loss"] + aux_m
    assert float(main["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(main["aux_loss"]) == pytest.approx(0.3)


def test_losses_run_in_fp32_under_autocast_and_reject_bad_shapes():
    a, b, fused = _images(13), _images(14), _images(15)
    prompts = {k: torch.full((1, 2, 4, 1), 0.5) for k in
               ("encoder_prompts_A", "encoder_prompts_B", "decoder_prompts_A", "decoder_prompts_B")}
    prompts["aux_loss"] = torch.tensor(0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = losses.task_loss("vif", fused.bfloat16(), a, b, prompts, epoch=5)
    assert all(t.dtype == torch.float32 for t in terms.values())
    with pytest.raises(ValueError, match="expected \\(B, 3, H, W\\)"):
        losses.task_loss("vif", fused[:, :1], a, b, prompts, epoch=0)
    with pytest.raises(ValueError, match="unknown task"):
        losses.task_loss("pan", fused, a, b, prompts, epoch=0)
