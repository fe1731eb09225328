"""The reference TC-MoA training losses (docs/tcmoa-reference.md, "Training").

Every image here is (B, 3, H, W) in [0, 1]: the fused image F (decoded, resized and clipped as
`tcmoa.model.decode_to_image01` does) and the two sources A and B. `task_loss` combines the pieces
per task and phase and reports the terms under the reference's names, so a run's log and the
golden fixture can be compared term by term.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Protocol

import torch
import torch.nn.functional as F

from tcmoa.config import TASKS, task_index

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
MFF_PATCH = 16
MEF_SIGMA_LUMINANCE = 0.2
MEF_WINDOW = 11
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5

# Fixed signed-gradient kernels of the reference (constants, never trained or saved).
_GRAD_KX = ((-0.2, 0.0, 0.2), (-1.0, 0.0, 1.0), (-0.2, 0.0, 0.2))
_GRAD_KY = ((0.2, 1.0, 0.2), (0.0, 0.0, 0.0), (-0.2, -1.0, -0.2))
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
_SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
_GREY_WEIGHTS = (0.2989, 0.587, 0.114)

_TASK_NAMES = {index: name for name, index in TASKS.items()}


class PromptsAndAux(Protocol):
    """What the losses need from a model output (`tcmoa.model.ModelOutput` has it)."""

    encoder_prompts_A: torch.Tensor
    encoder_prompts_B: torch.Tensor
    decoder_prompts_A: torch.Tensor
    decoder_prompts_B: torch.Tensor
    aux_loss: torch.Tensor


# --- windows and kernels ----------------------------------------------------------------------
def gaussian_window(size: int, sigma: float, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 2-D gaussian (size, size), the outer product of the 1-D window.

    Built in float32 like the reference (parity at 1e-6 depends on it: SSIM subtracts squares).
    """
    centre = size // 2
    g = torch.tensor([math.exp(-((x - centre) ** 2) / (2 * sigma**2)) for x in range(size)], dtype=torch.float32)
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)


def _kernel(rows: tuple, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


# --- SSIM ---------------------------------------------------------------------------------------
def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM: gaussian 11x11 (sigma 1.5) per channel, zero padding 5, C1 = 0.01^2, C2 = 0.03^2."""
    channels = x.shape[1]
    window = gaussian_window(SSIM_WINDOW, SSIM_SIGMA, dtype=x.dtype, device=x.device)
    window = window.expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, padding=SSIM_WINDOW // 2, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    sigma_xx = blur(x * x) - mu_xx
    sigma_yy = blur(y * y) - mu_yy
    sigma_xy = blur(x * y) - mu_xy
    ssim_map = ((2 * mu_xy + SSIM_C1) * (2 * sigma_xy + SSIM_C2)) / (
        (mu_xx + mu_yy + SSIM_C1) * (sigma_xx + sigma_yy + SSIM_C2)
    )
    return ssim_map.mean()


# --- gradients and pixels ----------------------------------------------------------------------
def signed_gradient(image: torch.Tensor) -> torch.Tensor:
    """kx*I + ky*I over the channel-summed image (cross-correlation, zero padding 1): (B, 1, H, W)."""
    channels = image.shape[1]
    kernels = torch.stack([_kernel(_GRAD_KX, image), _kernel(_GRAD_KY, image)])  # (2, 3, 3)
    weight = kernels[:, None].expand(2, channels, 3, 3)
    return F.conv2d(image, weight, padding=1).sum(dim=1, keepdim=True)


def max_gradient_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """3 * L1(grad F, g), g = the source gradient of larger magnitude, sign kept (ties: A)."""
    grad_a, grad_b = signed_gradient(a), signed_gradient(b)
    target = torch.where(grad_a.abs() >= grad_b.abs(), grad_a, grad_b)
    return 3 * F.l1_loss(signed_gradient(fused), target)


def average_pixel_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 3 * F.l1_loss(fused, (a + b) / 2)


def max_pixel_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(fused, torch.maximum(a, b))


def ssim_average_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((1 - ssim(fused, a)) + (1 - ssim(fused, b))) / 2


# --- MFF pseudo target -------------------------------------------------------------------------
def sobel_magnitude(image: torch.Tensor) -> torch.Tensor:
    """|Sobel x| + |Sobel y| of the grey image (0.2989 R + 0.587 G + 0.114 B), zero padding 1."""
    grey = (image * _kernel(_GREY_WEIGHTS, image)[None, :, None, None]).sum(dim=1, keepdim=True)
    gx = F.conv2d(grey, _kernel(_SOBEL_X, image)[None, None], padding=1)
    gy = F.conv2d(grey, _kernel(_SOBEL_Y, image)[None, None], padding=1)
    return gx.abs() + gy.abs()


def mff_pseudo_target(a: torch.Tensor, b: torch.Tensor, patch: int = MFF_PATCH) -> torch.Tensor:
    """Per patch x patch block, the source with the larger maximum Sobel magnitude (ties: A).

    Blocks at the right/bottom edge of a side that is not a multiple of `patch` are partial.
    """
    height, width = a.shape[-2:]
    peak_a = F.max_pool2d(sobel_magnitude(a), patch, ceil_mode=True)
    peak_b = F.max_pool2d(sobel_magnitude(b), patch, ceil_mode=True)
    choose_a = (peak_a >= peak_b).repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
    return torch.where(choose_a[..., :height, :width], a, b)


# --- MEF-SSIM (training variant: Ma et al.'s structure with a luminance term) -------------------
def mef_ssim(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean(l) * mean(cs) over the batch stacked into one tall image (single-level MEF-MS-SSIM)."""

    def tall(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (1, C, B*H, W)
        return t.permute(1, 0, 2, 3).reshape(1, t.shape[1], -1, t.shape[3])

    x = tall(fused)
    sources = torch.cat([tall(a), tall(b)])  # (K=2, C, B*H, W)
    channels = x.shape[1]
    window = gaussian_window(MEF_WINDOW, MEF_WINDOW / 6, dtype=x.dtype, device=x.device)
    window = (window / channels).expand(1, channels, MEF_WINDOW, MEF_WINDOW).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:  # averages the channels: (N, 1, B*H, W) -> (N, B*H, W)
        return F.conv2d(t, window, padding=MEF_WINDOW // 2)[:, 0]

    mu_k = blur(sources)
    var_k = blur(sources * sources) - mu_k * mu_k
    mu_x = blur(x)
    var_x = blur(x * x) - mu_x * mu_x
    cov_k = blur(sources * x) - mu_x * mu_k

    cs_k = (2 * cov_k + SSIM_C2) / (var_x + var_k + SSIM_C2)
    cs = torch.where(var_k[0] >= var_k[1], cs_k[0], cs_k[1])

    denom = 2 * MEF_SIGMA_LUMINANCE**2
    global_lum = mu_k.mean(dim=(1, 2))  # lY_k
    weights = torch.exp(-((global_lum - 0.5) ** 2) / denom)[:, None, None] * torch.exp(-((mu_k - 0.5) ** 2) / denom)
    mu_y = (weights * mu_k).sum(dim=0) / weights.sum(dim=0)
    lum = (2 * mu_x * mu_y + SSIM_C1) / (mu_x * mu_x + mu_y * mu_y + SSIM_C1)
    return lum.mean() * cs.mean()


# --- prompts -----------------------------------------------------------------------------------
def prompt_loss(
    encoder_a: torch.Tensor, encoder_b: torch.Tensor, decoder_a: torch.Tensor, decoder_b: torch.Tensor
) -> torch.Tensor:
    """MIR: 0.75 * MSE(p_A + p_B, 1) over the encoder prompts + 0.25 * the same over the decoder's."""
    encoder = ((encoder_a + encoder_b - 1) ** 2).mean()
    decoder = ((decoder_a + decoder_b - 1) ** 2).mean()
    return 0.75 * encoder + 0.25 * decoder


# --- per-task combinations ---------------------------------------------------------------------
def _task_name(task: "str | int") -> str:
    return _TASK_NAMES[task_index(task.lower() if isinstance(task, str) else task)]


def combine_task_terms(
    task: "str | int",
    fused01: torch.Tensor,
    a01: torch.Tensor,
    b01: torch.Tensor,
    prompts: Mapping[str, torch.Tensor],
    aux_loss: torch.Tensor,
    epoch: int,
    warmup_epochs: int = 2,
) -> dict[str, torch.Tensor]:
    """The reference's total and reported terms for one task step.

    prompts: `encoder_prompts_A/B`, `decoder_prompts_A/B`. aux_loss: the raw sum over modules
    (the total divides it by epoch + 1). Returns exactly the names the reference reports.
    """
    name = _task_name(task)
    for label, t in (("fused01", fused01), ("a01", a01), ("b01", b01)):
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"{label}: expected (B, 3, H, W), got {tuple(t.shape)}")
    if not fused01.shape == a01.shape == b01.shape:
        raise ValueError(f"fused/source shapes differ: {tuple(fused01.shape)}, {tuple(a01.shape)}, {tuple(b01.shape)}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")

    device_type = fused01.device.type
    with torch.autocast(device_type=device_type, enabled=False):  # losses always in fp32
        fused, a, b = fused01.float(), a01.float(), b01.float()
        aux = aux_loss.float()
        mir = prompt_loss(*(prompts[k].float() for k in (
            "encoder_prompts_A", "encoder_prompts_B", "decoder_prompts_A", "decoder_prompts_B")))
        aux_term = aux / (epoch + 1)
        warmup = epoch < warmup_epochs
        terms: dict[str, torch.Tensor]

        if name in ("vif", "mef") and warmup:
            pixel = average_pixel_loss(fused, a, b)
            ssim_avg = ssim_average_loss(fused, a, b)
            terms = {"loss": pixel + mir + ssim_avg + aux_term, "pixel_loss": pixel}
            if name == "mef":  # the reference reports the SSIM term of the MEF warm-up only
                terms["ssim_loss"] = ssim_avg
        elif name == "vif":
            grad = max_gradient_loss(fused, a, b)
            max_pixel = max_pixel_loss(fused, a, b)
            ssim_avg = ssim_average_loss(fused, a, b)
            total = 1.5 * grad + 1.5 * max_pixel + mir + 2 * ssim_avg + aux_term
            terms = {"loss": total, "ssim_loss": ssim_avg, "max_grad_loss": grad, "max_pixel_loss": max_pixel}
        elif name == "mef":
            grad = max_gradient_loss(fused, a, b)
            mef = 1 - mef_ssim(fused, a, b)
            pixel = average_pixel_loss(fused, a, b)
            total = 1.8 * (grad + mir + 2 * mef + pixel) + aux_term
            terms = {"loss": total, "pixel_loss": pixel, "MEF_SSIM_loss": mef, "max_grad_loss": grad}
        else:  # mff
            target = mff_pseudo_target(a, b)
            pixel = F.l1_loss(fused, target)
            structure = 1 - ssim(fused, target)
            if warmup:
                terms = {"loss": pixel + mir + structure + aux_term}
            else:
                grad = 3 * F.l1_loss(signed_gradient(fused), signed_gradient(target))
                terms = {"loss": 20 * (grad + pixel) + mir + 3 * structure + aux_term, "max_grad_loss": grad}
            terms.update(ssim_loss=structure, pixel_loss=pixel)
        terms.update(prompt_loss=mir, aux_loss=aux)
    return terms


def _prompt_dict(output: Any) -> dict[str, torch.Tensor]:
    names = ("encoder_prompts_A", "encoder_prompts_B", "decoder_prompts_A", "decoder_prompts_B")
    if isinstance(output, Mapping):
        return {k: output[k] for k in names}
    return {k: getattr(output, k) for k in names}


def task_loss(
    task: "str | int",
    fused01: torch.Tensor,
    a01: torch.Tensor,
    b01: torch.Tensor,
    output: "PromptsAndAux | Mapping[str, torch.Tensor]",
    epoch: int,
    warmup_epochs: int = 2,
) -> dict[str, torch.Tensor]:
    """Loss terms of one training step from a model output (prompts and aux loss)."""
    aux = output["aux_loss"] if isinstance(output, Mapping) else output.aux_loss
    return combine_task_terms(task, fused01, a01, b01, _prompt_dict(output), aux, epoch, warmup_epochs)


def fixture_loss_terms(
    task_name: str,
    fused01: torch.Tensor,
    a01: torch.Tensor,
    b01: torch.Tensor,
    prompts: Mapping[str, torch.Tensor],
    aux_loss: "torch.Tensor | float",
    epoch: int,
    warmup_epochs: int = 2,
) -> dict[str, float]:
    """Every loss term for a golden-fixture comparison (`tcmoa check-parity`), as floats."""
    aux = torch.as_tensor(aux_loss, dtype=torch.float32)
    with torch.no_grad():
        terms = combine_task_terms(task_name, fused01, a01, b01, prompts, aux, epoch, warmup_epochs)
    return {k: float(v) for k, v in terms.items()}
