"""The two-stream TC-MoA network.

A frozen MAE ViT (encoder + pixel decoder) runs on sources A and B with shared weights; every
`tau` blocks a TC-MoA module prompts both streams, fuses them with a small conv layer and mixes
the result back into both. The decoder output of stream A is the fused image.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Mapping, Union

import torch
import torch.nn.functional as F
from torch import nn

from tcmoa.adapters import FusionLayer, PromptControl, TCMoAModule
from tcmoa.config import IMAGENET_MEAN, IMAGENET_STD, TASKS, TCMoAConfig, get_config, task_index
from tcmoa.vit import Block, PatchEmbed, RelativePositionBias, interpolate_pos_table, sincos_pos_table

Route = Union[str, int, Mapping[str, float], torch.Tensor]

# Names of the trainable groups; everything else is the frozen MAE backbone.
_TRAINABLE_PREFIXES = (
    "blocks_MoA.", "decoder_blocks_MoA.", "FusionLayer.", "de_FusionLayer.",
    "en_relative_position.", "de_relative_position.", "Alpha_encoder", "Alpha_decoder",
)


def _fp32(x: torch.Tensor):
    """Context that switches autocast off for x's device type (a no-op when it is off)."""
    device_type = x.device.type
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()


@dataclass
class ModelOutput:
    pred: torch.Tensor  # (B, 3, sH, sW) decoder output in normalised space, before any resize
    encoder_prompts_A: torch.Tensor  # (M_enc, B, N, 1)
    encoder_prompts_B: torch.Tensor
    decoder_prompts_A: torch.Tensor  # (M_dec, B, N, 1)
    decoder_prompts_B: torch.Tensor
    aux_loss: torch.Tensor  # sum over modules of the load-balancing losses
    token_grid: tuple[int, int]  # (h, w) of the token grid


def _channel_view(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> ImageNet-normalised."""
    return (x01 - _channel_view(IMAGENET_MEAN, x01)) / _channel_view(IMAGENET_STD, x01)


def denormalize(xn: torch.Tensor) -> torch.Tensor:
    return xn * _channel_view(IMAGENET_STD, xn) + _channel_view(IMAGENET_MEAN, xn)


def decode_to_image01(pred: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Decoder output -> (B, 3, H, W) image in [0, 1].

    'nearest' is the reference's resize (out[i, j] = in[2i, 2j]); 'area' averages each 2x2
    block, which removes the aliasing that nearest resampling keeps.
    """
    if tuple(pred.shape[-2:]) != tuple(size):
        if mode == "nearest":
            pred = F.interpolate(pred, size=size, mode="nearest")
        elif mode == "area":
            pred = F.interpolate(pred, size=size, mode="area")
        else:
            raise ValueError(f"unknown downsample mode {mode!r}; use 'nearest' or 'area'")
    return denormalize(pred.float()).clamp(0.0, 1.0)


class TCMoA(nn.Module):
    def __init__(self, config: "TCMoAConfig | str" = "tiny"):
        super().__init__()
        cfg = self.config = get_config(config)
        dim, ddim = cfg.embed_dim, cfg.decoder_embed_dim
        num_patches = cfg.pos_grid**2

        # --- frozen MAE backbone (names as in the MAE checkpoints) -------------------------
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))  # unused; kept for checkpoint fidelity
        self.pos_embed = nn.Parameter(sincos_pos_table(dim, cfg.pos_grid), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, ddim)
        self.decoder_pos_embed = nn.Parameter(sincos_pos_table(ddim, cfg.pos_grid), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(ddim, cfg.decoder_num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(ddim, eps=1e-6)
        self.decoder_pred = nn.Linear(ddim, cfg.patch_size**2 * cfg.in_chans)
        assert self.pos_embed.shape[1] == num_patches + 1

        # --- trainable: relative position tables and TC-MoA modules ------------------------
        w = cfg.window_size
        self.en_relative_position = nn.ModuleList(
            RelativePositionBias(w, cfg.num_heads) for _ in range(cfg.depth // 2)
        )
        self.de_relative_position = nn.ModuleList(
            RelativePositionBias(w, cfg.decoder_num_heads) for _ in range(cfg.decoder_depth // 2)
        )
        moa = (cfg.num_tasks, cfg.num_experts, cfg.top_k)
        self.blocks_MoA = nn.ModuleList(TCMoAModule(dim, *moa) for _ in range(cfg.num_encoder_modules))
        self.FusionLayer = nn.ModuleList(FusionLayer(dim) for _ in range(cfg.num_encoder_modules))
        self.decoder_blocks_MoA = nn.ModuleList(TCMoAModule(ddim, *moa) for _ in range(cfg.num_decoder_modules))
        self.de_FusionLayer = nn.ModuleList(FusionLayer(ddim) for _ in range(cfg.num_decoder_modules))
        self.Alpha_encoder = nn.Parameter(torch.full((cfg.num_encoder_modules,), 0.5))
        self.Alpha_decoder = nn.Parameter(torch.full((cfg.num_decoder_modules,), 0.5))

        self._encoder_moa_after = {i: k for k, i in enumerate(cfg.moa_blocks(cfg.depth))}
        self._decoder_moa_after = {i: k for k, i in enumerate(cfg.moa_blocks(cfg.decoder_depth))}
        self._init_backbone()
        self.freeze_backbone()

    # --- parameters ----------------------------------------------------------------------
    def _init_backbone(self) -> None:
        """MAE's initialisation, so a fresh model (and MAE pre-training) starts where MAE does."""
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for module in [*self.blocks, *self.decoder_blocks, self.decoder_embed, self.decoder_pred]:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    @staticmethod
    def is_trainable_name(name: str) -> bool:
        return name.startswith(_TRAINABLE_PREFIXES)

    def freeze_backbone(self) -> None:
        for name, p in self.named_parameters():
            p.requires_grad_(self.is_trainable_name(name))

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if self.is_trainable_name(n)]

    def backbone_state_names(self) -> list[str]:
        return [n for n in self.state_dict() if not self.is_trainable_name(n)]

    def source_encoding_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.endswith("source_encoding")]

    # --- routing -------------------------------------------------------------------------
    def route_vector(self, task: Route, device=None) -> torch.Tensor:
        """Router mixing weights (num_tasks,): one-hot for a task, normalised for a mix."""
        n = self.config.num_tasks
        if isinstance(task, torch.Tensor):
            vec = task.float()
        elif isinstance(task, Mapping):
            vec = torch.zeros(n)
            for name, weight in task.items():
                vec[task_index(name)] += float(weight)
            total = float(vec.sum())
            if total <= 0 or bool((vec < 0).any()):
                raise ValueError(f"router mix {dict(task)} needs non-negative weights with a positive sum")
            vec = vec / total
        else:
            vec = F.one_hot(torch.tensor(task_index(task)), n).float()
        if vec.shape != (n,):
            raise ValueError(f"router vector must have shape ({n},), got {tuple(vec.shape)}")
        return vec.to(device)

    # --- forward -------------------------------------------------------------------------
    def forward(self, a_norm: torch.Tensor, b_norm: torch.Tensor, task: Route = "vif",
                alpha: float = 1.0, beta: float = 0.0) -> ModelOutput:
        cfg = self.config
        if a_norm.shape != b_norm.shape or a_norm.ndim != 4 or a_norm.shape[1] != cfg.in_chans:
            raise ValueError(f"sources must both be (B, {cfg.in_chans}, H, W); got {tuple(a_norm.shape)} and {tuple(b_norm.shape)}")
        h, w = a_norm.shape[-2:]
        if h % cfg.tile_multiple or w % cfg.tile_multiple:
            raise ValueError(f"input size {h}x{w} must be a multiple of {cfg.tile_multiple} on each side (pad it)")
        batch = a_norm.shape[0]
        route = self.route_vector(task, a_norm.device)
        control = PromptControl(alpha, beta)

        x = torch.cat([a_norm, b_norm], dim=0)  # both streams as one batch through shared weights
        if cfg.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x, grid = self.patch_embed(x)
        x = x + interpolate_pos_table(self.pos_embed, grid)
        x, enc_a, enc_b, aux_enc = self._run_stage(
            x, grid, self.blocks, self.en_relative_position, self._encoder_moa_after,
            self.blocks_MoA, self.FusionLayer, self.Alpha_encoder, route, control, restandardise=False,
        )
        x = self.decoder_embed(self.norm(x))
        x = x + interpolate_pos_table(self.decoder_pos_embed, grid)
        x, dec_a, dec_b, aux_dec = self._run_stage(
            x, grid, self.decoder_blocks, self.de_relative_position, self._decoder_moa_after,
            self.decoder_blocks_MoA, self.de_FusionLayer, self.Alpha_decoder, route, control, restandardise=True,
        )
        with _fp32(x):  # the pixel head is cheap; fp32 keeps bf16 rounding out of the output
            tokens = self.decoder_pred(self.decoder_norm(x[:batch].float()))
        return ModelOutput(
            pred=self.unpatchify(tokens, grid),
            encoder_prompts_A=enc_a, encoder_prompts_B=enc_b,
            decoder_prompts_A=dec_a, decoder_prompts_B=dec_b,
            aux_loss=aux_enc + aux_dec, token_grid=grid,
        )

    def _run_stage(self, x, grid, blocks, rel_tables, moa_after, moa_modules, fusion_layers, alphas,
                   route, control, restandardise):
        cfg = self.config
        window, shift = cfg.window_size, cfg.shift_size
        prompts_a, prompts_b = [], []
        aux = x.new_zeros((), dtype=torch.float32)
        for i, block in enumerate(blocks):
            x = block(x, grid, rel_tables[i // 2](), window, shift if i % 2 else 0)
            k = moa_after.get(i)
            if k is None:
                continue
            x, p_a, p_b, aux_k = self._mix(x, grid, moa_modules[k], fusion_layers[k], alphas[k],
                                           route, control, restandardise)
            prompts_a.append(p_a)
            prompts_b.append(p_b)
            aux = aux + aux_k
        stack = lambda ps: torch.stack(ps) if ps else x.new_zeros((0, x.shape[0] // 2, x.shape[1], 1))
        return x, stack(prompts_a), stack(prompts_b), aux

    def _mix(self, x, grid, moa, fusion, alpha, route, control, restandardise):
        """One TC-MoA step on the stacked streams (2B, N, C); runs in fp32 even under autocast."""
        dtype = x.dtype
        with _fp32(x):
            x = x.float()
            xa, xb = x.chunk(2, dim=0)
            pa_feat, pb_feat, p_a, p_b, aux = moa(xa, xb, route, control)
            fused = fusion(pa_feat + pb_feat, grid)
            mixed = alpha * fused.unsqueeze(0) + (1 - alpha) * torch.stack([xa, xb])
            mixed = mixed.flatten(0, 1)
            if restandardise:
                mixed = self._restandardise(mixed, x)
        return mixed.to(dtype), p_a, p_b, aux

    @staticmethod
    def _restandardise(mixed: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """Give each sample the mean and (unbiased) std over tokens and channels it had before."""
        dims = (1, 2)
        m_mean, m_std = mixed.mean(dims, keepdim=True), mixed.std(dims, keepdim=True)
        o_mean, o_std = old.mean(dims, keepdim=True), old.std(dims, keepdim=True)
        return (mixed - m_mean) * o_std / (m_std + 1e-12) + o_mean

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, h*w, p*p*3) -> (B, 3, h*p, w*p); patch pixels ordered (row, column, channel)."""
        p, (h, w) = self.config.patch_size, grid
        x = tokens.reshape(tokens.shape[0], h, w, p, p, self.config.in_chans)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(tokens.shape[0], self.config.in_chans, h * p, w * p)


def count_parameters(model: TCMoA) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    source = sum(p.numel() for n, p in model.named_parameters() if n.endswith("source_encoding"))
    trainable = sum(p.numel() for _, p in model.trainable_parameters())
    return {"total": total, "trainable": trainable, "source_encodings": source,
            "trainable_without_source_encodings": trainable - source}


__all__ = ["TCMoA", "ModelOutput", "normalize", "denormalize", "decode_to_image01", "count_parameters", "TASKS"]
