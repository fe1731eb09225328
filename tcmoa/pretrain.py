"""Masked-autoencoder pre-training of the frozen backbone, for configs without public MAE weights.

The network is MAE's "visualize" variant: encoder + pixel decoder, 75% of the patches masked,
and the loss on raw (ImageNet-normalised) pixels of the masked patches, not per-patch normalised
ones, so the decoder learns to output pixels, which TC-MoA decodes into the fused image. The
modules and parameter names are the TC-MoA backbone's (tcmoa.vit blocks, MAE key names), so the
result loads with `tcmoa.checkpoints.load_mae_weights` and is what `tcmoa train` takes as
`backbone:`.

Attention, and why: the encoder attends globally over the visible tokens, exactly as MAE (a
window over a random 25% of the tokens has no grid to live on); the decoder runs on the full
token grid with TC-MoA's 14x14 windows and half-window shifts, without relative bias (those tables
belong to TC-MoA and are trained there). At the default 224 px the grid is 14 x 14 tokens, one
window, so windowed and global attention coincide and the backbone is pre-trained exactly as the
public MAE checkpoints were; TC-MoA later runs the same weights windowed on larger tiles, just as
it does with those checkpoints. No cls token is used (TC-MoA uses none); `cls_token` is kept at
its initial value so the file has MAE's complete key set.

Output: `<run_dir>/mae_backbone.pth` ({'model': state dict}, MAE's checkpoint layout), plus
checkpoints, metrics.jsonl and exact resume as in `tcmoa.train`.
"""
from __future__ import annotations

import math
import pathlib
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tcmoa.config import TCMoAConfig, get_config
from tcmoa.devices import autocast_dtype, resolve_device, resolve_precision
from tcmoa.data import find_layout, list_images, random_resized_crop_box, read_image01, stream_loader, PairStream
from tcmoa.model import normalize
from tcmoa.run_state import (CheckpointStore, MetricsLog, RunStateError, all_mean, atomic_write,
                             distributed, gather, parameter_groups, record_config, rng_state, seed_rank,
                             set_rng_state, warmup_cosine_lr)
from tcmoa.synth import skimage_photos
from tcmoa.train_config import PretrainConfig
from tcmoa.vit import Block, PatchEmbed, interpolate_pos_table, sincos_pos_table

BACKBONE_FILE = "mae_backbone.pth"
# Keeps the pre-training data stream apart from the fusion tasks' streams (0, 1, 2).
_STREAM = 100
_RUN_DEFINING = ("model", "seed", "image_size", "crop_scale", "mask_ratio", "loss_patches", "upsample",
                 "batch_size", "epochs", "iters_per_epoch", "warmup_epochs", "base_lr", "min_lr", "weight_decay", "betas", "clip_grad",
                 "photos")


class MaskedAutoencoder(nn.Module):
    """MAE encoder + pixel decoder with the TC-MoA backbone's module names."""

    def __init__(self, config: "TCMoAConfig | str" = "tiny", upsample: bool = False):
        super().__init__()
        cfg = self.config = get_config(config)
        self.upsample = upsample  # enlarge inputs 2x first, as TC-MoA does (the target is the enlarged image)
        dim, ddim = cfg.embed_dim, cfg.decoder_embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim), requires_grad=False)  # unused, see module doc
        self.pos_embed = nn.Parameter(sincos_pos_table(dim, cfg.pos_grid), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_table(ddim, cfg.pos_grid), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(ddim, cfg.decoder_num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(ddim, eps=1e-6)
        self.decoder_pred = nn.Linear(ddim, cfg.patch_size**2 * cfg.in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE's initialisation."""
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, h*w, p*p*3), pixels ordered (row, column, channel) like the decoder's."""
        p = self.config.patch_size
        b, c, h, w = images.shape
        x = images.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    @staticmethod
    def random_masking(tokens: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random (1 - ratio) share of each sample's tokens (MAE's shuffle by noise).

        Returns (kept tokens, mask (B, N) with 1 = masked, indices that undo the shuffle).
        """
        b, n, d = tokens.shape
        keep = int(n * (1 - ratio))
        noise = torch.rand(b, n, device=tokens.device)
        shuffle = torch.argsort(noise, dim=1)
        restore = torch.argsort(shuffle, dim=1)
        kept = torch.gather(tokens, 1, shuffle[:, :keep, None].expand(-1, -1, d))
        mask = torch.ones(b, n, device=tokens.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, restore), restore

    def forward(self, images: torch.Tensor, mask_ratio: float = 0.75, loss_patches: str = "masked"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images: (B, 3, H, W) normalised. Returns (loss, prediction (B, N, p*p*3), mask).

        The loss is the mean squared error over the masked patches (MAE) or, with
        loss_patches="all" or when nothing is masked (mask_ratio=0), over every patch.
        """
        cfg = self.config
        no_bias = lambda heads: images.new_zeros(heads, 1, 1)  # broadcasts over every token pair
        if self.upsample:
            images = F.interpolate(images, scale_factor=2, mode="bilinear", align_corners=False)
        x, grid = self.patch_embed(images)
        x = x + interpolate_pos_table(self.pos_embed, grid)
        x, mask, restore = self.random_masking(x, mask_ratio)
        bias = no_bias(cfg.num_heads)
        for block in self.blocks:  # global attention over the visible tokens
            x = x + block.attn(block.norm1(x), bias)
            x = x + block.mlp(block.norm2(x))
        y = self.decoder_embed(self.norm(x))
        b, n = mask.shape
        y = torch.cat([y, self.mask_token.expand(b, n - y.shape[1], -1)], dim=1)
        y = torch.gather(y, 1, restore[..., None].expand(-1, -1, y.shape[2]))
        y = y + interpolate_pos_table(self.decoder_pos_embed, grid)
        bias = no_bias(cfg.decoder_num_heads)
        for i, block in enumerate(self.decoder_blocks):  # TC-MoA's windows and shifts
            y = block(y, grid, bias, cfg.window_size, cfg.shift_size if i % 2 else 0)
        pred = self.decoder_pred(self.decoder_norm(y))
        error = ((pred.float() - self.patchify(images).float()) ** 2).mean(dim=-1)
        if loss_patches == "all" or not bool(mask.any()):  # no masked patch: score them all, not 0/0
            return error.mean(), pred, mask
        if loss_patches != "masked":
            raise ValueError(f"loss_patches must be 'masked' or 'all', got {loss_patches!r}")
        return (error * mask).sum() / mask.sum(), pred, mask

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """MAE's key names and layout (what load_mae_weights reads)."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}


# --- data ---------------------------------------------------------------------------------------------
class ImageSource:
    """Single images for pre-training: photo folders, 'skimage', or both sources of pair folders.

    Implements the pair-source protocol with the image as both sources (no copy), so the
    resumable `PairStream` serves it too.
    """

    def __init__(self, entries: Sequence[str]):
        self.items: list["pathlib.Path | np.ndarray"] = []
        for entry in entries:
            if entry == "skimage":
                self.items.extend(skimage_photos())
                continue
            folder = pathlib.Path(entry)
            layout = find_layout(folder)
            folders = [layout[1], layout[2]] if layout else [folder]
            found = [p for f in folders for p in list_images(f)]
            if not found:
                raise ValueError(f"{folder}: no image files for pre-training")
            self.items.extend(found)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        item = self.items[index]
        image = read_image01(item) if isinstance(item, pathlib.Path) else item
        name = item.name if isinstance(item, pathlib.Path) else f"skimage-{index}"
        return image, image, name


class ImageTransform:
    """Random resized crop + horizontal flip of one image, ImageNet-normalised (MAE's augmentation)."""

    def __init__(self, size: int, scale: tuple[float, float]):
        self.size, self.scale = size, scale

    def __call__(self, image: np.ndarray, _same: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], self.scale, rng)
        crop = torch.from_numpy(np.ascontiguousarray(image[top:top + h, left:left + w])).permute(2, 0, 1)[None]
        crop = F.interpolate(crop.float(), size=(self.size, self.size), mode="bicubic", align_corners=False,
                             antialias=True).clamp(0.0, 1.0)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        return {"image": normalize(crop)[0]}


# --- loop ---------------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    run_dir: pathlib.Path
    backbone: pathlib.Path | None  # rank 0: the MAE checkpoint `tcmoa train` takes as `backbone:`
    steps: int
    loss: float


def _save_backbone(model: MaskedAutoencoder, path: pathlib.Path) -> None:
    state = model.backbone_state_dict()
    atomic_write(path, lambda tmp: torch.save({"model": state}, tmp))


def pretrain(config: PretrainConfig, *, resume: bool = True, device: "torch.device | str | None" = None,
             progress: bool = True) -> PretrainResult:
    """MAE pre-training as `config` says; resumes from the run directory's last checkpoint."""
    rank, world = distributed()
    dev = resolve_device(device or config.device)
    autocast = autocast_dtype(resolve_precision(config.precision, dev))
    if config.threads:
        torch.set_num_threads(config.threads)
    cfg = get_config(config.model)

    torch.manual_seed(config.seed)
    model = MaskedAutoencoder(cfg, upsample=config.upsample).to(dev).train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lr = config.base_lr * config.batch_size * world / 256
    optimizer = torch.optim.AdamW(parameter_groups(named, config.weight_decay), lr=lr, betas=config.betas)
    source = ImageSource(config.photos)
    per_rank = len(source) // world
    if per_rank == 0:
        raise ValueError(f"{len(source)} images cannot be split over {world} workers")
    iters_per_epoch = config.iters_per_epoch or max(1, per_rank // config.batch_size)
    total = config.epochs * iters_per_epoch
    end = min(total, config.max_steps) if config.max_steps else total

    store = CheckpointStore(config.run_dir / "checkpoints", config.keep_checkpoints, weights_suffix=".pth")
    state = store.latest()
    if state is not None and not resume:
        raise RunStateError(f"{config.run_dir}: holds checkpoints (last at step {state['step']}); resume it or "
                            f"choose another run_dir")
    start = 0
    if state is not None:
        if state["world_size"] != world:
            raise RunStateError(f"{store.pointer}: written by {state['world_size']} workers, now {world}")
        changed = [k for k in _RUN_DEFINING if state["config"].get(k) != config.to_dict().get(k)]
        if changed:
            raise RunStateError(f"{store.pointer}: the config changed since the checkpoint: {changed}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"][rank])
        start = int(state["step"])
    else:
        seed_rank(config.seed, rank)  # different masks per rank

    if rank == 0:
        record_config(config.run_dir, config.to_dict())
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    stream = PairStream(source, ImageTransform(config.image_size, config.crop_scale), _STREAM, config.seed, rank, world)
    batches = iter(stream_loader(stream, config.batch_size, start, config.num_workers, dev.type == "cuda"))
    log = MetricsLog(config.run_dir, start, rank == 0)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=end, initial=start, desc="pretrain", unit="step", dynamic_ncols=True)
    loss_value = math.nan
    try:
        tic = time.perf_counter()
        for step in range(start, end):
            step_lr = warmup_cosine_lr(step, iters_per_epoch, lr, config.min_lr, config.warmup_epochs, config.epochs)
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            images = next(batches)["image"].to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                loss, _, _ = net(images, config.mask_ratio, config.loss_patches)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pre-training step {step + 1}: the loss is {float(loss)}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad:
                torch.nn.utils.clip_grad_norm_([p for _, p in named], config.clip_grad)
            optimizer.step()
            done = step + 1
            loss_value = float(loss.detach())
            if done % config.log_every == 0 or done == end:
                mean = all_mean({"loss": loss_value}, world, dev)
                log.write({"step": done, "epoch": step // iters_per_epoch, "lr": step_lr,
                           "seconds": round(time.perf_counter() - tic, 3), **mean})
            if done % config.checkpoint_every == 0 or done == end:
                rng = gather(rng_state(), world)
                if rank == 0:
                    snapshot = {"step": done, "world_size": world, "model": model.state_dict(),
                                "optimizer": optimizer.state_dict(), "rng": rng, "config": config.to_dict(),
                                "data_position": done * config.batch_size}
                    store.save(done, snapshot, lambda path: _save_backbone(model, path))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
        log.close()

    backbone = None
    if rank == 0:
        backbone = config.run_dir / BACKBONE_FILE
        _save_backbone(model, backbone)
    return PretrainResult(config.run_dir, backbone, end, loss_value)
