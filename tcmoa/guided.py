"""Prompt-guided reconstruction: the fused image built from the source pixels themselves.

The TC-MoA prompts say, per token, how much of each source the model keeps (p_A, p_B). Here
source A's share w = p_A / (p_A + p_B), smoothly (bilinearly) upsampled to pixels, weights a
choose-max over the sources' Laplacian pyramids (`tcmoa.pyramid.select`): at each detail level a
pixel takes A's band-pass coefficient where w |dA| >= (1 - w) |dB|, else B's; the base level is
mixed by w as a multiresolution spline wherever the sources' bases differ (so shares that change
from region to region set the exposure / thermal contrast without drawing steps or halos) and
directly where they agree (so a background the sources share stays exactly as it is). Why a
weighted selection rather than a weighted average of the bands: the prompts live on 8 x 8-pixel
tokens, and averaging the detail of both sources inside a token halves every edge that only one
source has (the pixel average's loss on Qabf/Qcb), whereas the selection keeps each edge at full
strength and lets the prompts decide between competing ones. Per task (`TASK_RULES`): for
multi-focus pairs a detail's magnitude is averaged over a small box first (focus is a property of
a region); for visible-infrared pairs the base level follows the locally more contrasted source,
weighted by the shares, instead of being mixed by them; for exposure brackets a detail is scaled
towards the fused brightness (a dark exposure's texture keeps part of its relative contrast on a
brighter base). With w = 0.5 everywhere and the plain rule (a router with no dominant task) it is
exactly the classical Laplacian-pyramid fusion (`baseline:laplacian`); with w = 1 (or 0)
everywhere, source A (or B) exactly; where w is 1 over a region, that region gets A's detail levels
exactly and A's pixels up to the spline's lowest frequencies: sharpness kept, no detail invented.
Grey + colour pairs are fused in luminance (Y of BT.601 YCbCr) and keep the colour source's chroma.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tcmoa.config import TASKS
from tcmoa.pyramid import is_grey, pyramid_levels, rgb_to_ycbcr, select, select_torch, ycbcr_to_rgb

# Pyramid depth, as `baseline:laplacian`'s: the base level (1/8 scale) matches the token grid of the
# prompts, and equal shares with the plain rule reproduce that baseline exactly.
LEVELS = 4


@dataclass(frozen=True)
class SelectionRule:
    """How tcmoa.pyramid.select chooses, per task. window: the box (pixels of each detail level)
    a source's detail magnitude is averaged over first (1: per pixel). base_by_activity: the base
    level follows the prompt-weighted locally more contrasted source instead of being mixed by
    the shares; base_power: how sharply it follows the contrast (1: in proportion to the weighted
    contrasts). detail_gain: p of the contrast-preserving detail transfer (a chosen detail times
    (the shares' brightness / its source's brightness) ** p; 0: details copied as they are).
    detail_power: k of a soft detail choice (A weighted by score_A^k / (score_A^k + score_B^k);
    0: the hard choice). The fields are select()'s and select_torch()'s keyword arguments (passed
    as they are). tools/rule_settings.py scores settings on a training split."""

    window: int = 1
    base_by_activity: bool = False
    detail_gain: float = 0.0
    base_power: float = 1.0
    detail_power: float = 0.0


# Per task (settings chosen on the training splits; docs/model-card.md tells how each was found):
# - multi-focus: focus is a property of a region, so the selection follows the sharper source
#   region by region (area-based activity, as classical multi-focus fusion does);
# - visible-infrared: the base follows the locally more contrasted source (a thermal target, a
#   textured visible region), as pyramid + sparse-representation fusion chooses its low-pass band;
# - exposure brackets: per-pixel details, the share-mixed base (its brightness), and each detail
#   scaled by (fused brightness / its source's) ** 1/8, so a dark exposure's detail placed on a
#   brighter fused base keeps part of its contrast relative to the local brightness.
TASK_RULES = {"vif": SelectionRule(base_by_activity=True, detail_power=8.0), "mef": SelectionRule(detail_gain=0.125),
              "mff": SelectionRule(window=9, detail_power=8.0)}


# The guided mode's version: bump it whenever the guided output of given shares changes (a rule, a
# constant of tcmoa.pyramid's selection), so that runs resumed with new code redo their units
# instead of mixing outputs of two versions (it enters the pipeline's unit ids).
# 3: per-task selection rules (2026-12-06). 4: the settings rule (tools/rule_settings.py): the MEF
# rule's detail gain, the VIF base choice linear in the weighted contrasts, the MFF box 9 x 9.
# 5: the soft detail choice of the VIF and MFF rules (same day).
GUIDED_VERSION = 5


def selection_rule(route: torch.Tensor) -> SelectionRule:
    """The selection rule of a router vector (num_tasks,): its dominant task's; a mix with no
    single largest weight gets the plain rule (per-pixel details, share-mixed base)."""
    largest = torch.sort(route.float(), descending=True).values
    if largest.numel() > 1 and bool(largest[0] == largest[1]):
        return SelectionRule()
    return TASK_RULES[list(TASKS)[int(route.argmax())]]


def token_share(out) -> torch.Tensor:
    """(B, 1, h, w) on the token grid: source A's share p_A / (p_A + p_B), averaged over all TC-MoA
    modules of a model output (differentiable)."""
    p_a = torch.cat([out.encoder_prompts_A, out.decoder_prompts_A]).float()
    p_b = torch.cat([out.encoder_prompts_B, out.decoder_prompts_B]).float()
    share = (p_a / (p_a + p_b).clamp_min(1e-6)).mean(0)[..., 0]  # (B, N)
    return share.view(-1, 1, *out.token_grid)


def prompt_share(out, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W): source A's share per pixel, `token_share` bilinearly upsampled (differentiable)."""
    return F.interpolate(token_share(out), size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)


def token_energies(a01: torch.Tensor, b01: torch.Tensor, grid: tuple[int, int],
                    relative: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each source's mean squared luminance gradient (Sobel) per cell of a `grid` over (B, 3, H, W)
    sources in [0, 1], divided by (the cell's mean luminance + 0.05) ** relative: two (B, 1, h, w)
    maps. relative = 0: plain gradient energy; > 0: energy relative to brightness (Weber-like),
    which credits an under-exposed source with the detail it has in its dark regions."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=a01.dtype, device=a01.device).view(1, 3, 1, 1)
    sobel_x = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=a01.dtype, device=a01.device)
    kernels = torch.stack([sobel_x, sobel_x.T]).unsqueeze(1)  # (2, 1, 3, 3)

    def energy(x: torch.Tensor) -> torch.Tensor:
        luma = (x * weights).sum(1, keepdim=True)
        gradient = F.conv2d(F.pad(luma, (1, 1, 1, 1), mode="replicate"), kernels)
        cell_energy = F.adaptive_avg_pool2d((gradient ** 2).sum(1, keepdim=True), grid)
        if relative:
            cell_energy = cell_energy / (F.adaptive_avg_pool2d(luma, grid) + 0.05) ** relative
        return cell_energy

    return energy(a01), energy(b01)


def focus_shares(a01: torch.Tensor, b01: torch.Tensor, grid: tuple[int, int], relative: float = 0.0) -> torch.Tensor:
    """(B, 1, h, w): source A's share of the luminance gradient energy (`token_energies`) in each
    cell of a `grid`: which source carries the detail where, token by token (the target
    `focus_target` trains the prompts towards; tools/oracle_shares.py measured what the guided
    selection reaches with such shares)."""
    ea, eb = token_energies(a01, b01, grid, relative)
    return ea / (ea + eb).clamp_min(1e-12)


def focus_target_loss(share: torch.Tensor, a01: torch.Tensor, b01: torch.Tensor, relative: float = 0.0) -> torch.Tensor:
    """Mean squared gap between token shares (B, 1, h, w) and `focus_shares`, each token weighted
    by e / (e + mean e), e its total gradient energy: where neither source has detail the target is
    a ratio of noise and the share hardly matters to the output, so such tokens count little."""
    ea, eb = token_energies(a01, b01, tuple(share.shape[-2:]), relative)
    total = ea + eb
    target = ea / total.clamp_min(1e-12)
    weight = total / (total + total.mean(dim=(2, 3), keepdim=True)).clamp_min(1e-12)
    return (weight * (share - target) ** 2).sum() / weight.sum().clamp_min(1e-12)


def guided_training_image(a01: torch.Tensor, b01: torch.Tensor, share: torch.Tensor,
                          rule: SelectionRule = SelectionRule()) -> torch.Tensor:
    """The guided output of (B, 3, H, W) RGB sources as training sees it: the soft, differentiable
    twin of guided_fusion's selection, on RGB (grey sources arrive repeated to 3 channels), so the
    task losses reach the prompts directly."""
    return select_torch(a01, b01, share, pyramid_levels(tuple(a01.shape[-2:]), LEVELS), **asdict(rule))


def guided_fusion(a: np.ndarray, b: np.ndarray, weight_a: np.ndarray, levels: int | None = None,
                  rule: SelectionRule = SelectionRule()) -> np.ndarray:
    """Fuse sources (N, H, W, C) in [0, 1], C in {1, 3}, with A's per-pixel share (N, H, W) and
    the task's selection rule (`TASK_RULES`).

    Per pair: both grey -> the grey blend; both colour -> RGB blended; grey + colour ->
    luminance blended, chroma of the colour source. A grey source may be stored as three equal
    channels. Returns (N, H, W, C_out) float32 in [0, 1], C_out = 3 if either input has 3 channels.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    weight_a = np.asarray(weight_a, dtype=np.float64)[..., None]
    levels = pyramid_levels(a.shape[1:3], levels or LEVELS)
    choose = lambda x, y, w: select(x, y, w, levels, **asdict(rule))
    channels = max(a.shape[-1], b.shape[-1])
    out = np.empty((*a.shape[:3], channels), dtype=np.float32)
    for i in range(a.shape[0]):
        ai, bi, wi = a[i:i + 1], b[i:i + 1], weight_a[i:i + 1]
        grey_a, grey_b = is_grey(ai[0]), is_grey(bi[0])
        if grey_a and grey_b:
            fused = choose(ai[..., :1], bi[..., :1], wi)
        elif not grey_a and not grey_b:
            fused = choose(ai, bi, wi)
        else:
            colour = rgb_to_ycbcr(ai if grey_b else bi)
            y_a = ai[..., :1] if grey_a else colour[..., :1]
            y_b = bi[..., :1] if grey_b else colour[..., :1]
            fused = ycbcr_to_rgb(np.concatenate([choose(y_a, y_b, wi), colour[..., 1:]], axis=-1))
        out[i] = np.clip(fused[0], 0.0, 1.0)  # a grey result broadcasts over 3 output channels
    return out
