"""The TC-MoA training loop: the reference schedule, EMA, checkpoints and exact resume.

One iteration ("step") runs one optimiser step per task, VIF then MEF then MFF, each on its own
batch. The MAE backbone stays frozen; AdamW trains the TC-MoA modules, fusion layers, relative
position tables, alphas and source encodings. The loop is distribution-agnostic: when a
torch.distributed process group exists (torchrun, Ray Train) it wraps the model in DDP and
shards the data by rank; otherwise it runs plain.

Run directory:
    config.yaml                    the resolved config of the run
    metrics.jsonl                  one line per logged step (+ TensorBoard events if installed)
    checkpoints/step_NNNNNNNN.safetensors   EMA weights (tcmoa.checkpoints format: loadable by load_fuser)
    checkpoints/step_NNNNNNNN.state.pt      raw weights, optimizer, EMA, RNG states, step
    checkpoints/latest.json        the last complete checkpoint (written last, atomically)
    samples/step_NNNNNNNN_<task>.png        A | B | fused (EMA weights), every `sample_every` steps
    final.safetensors              EMA weights at the end of the run
"""
from __future__ import annotations

import contextlib
import math
import pathlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from tcmoa.checkpoints import (file_sha256, load_mae_weights, load_model, load_reference_checkpoint, read_metadata,
                               save_model)
from tcmoa.config import get_config, task_index
from tcmoa.devices import autocast_dtype, resolve_device, resolve_precision
from tcmoa.data import ConcatPairs, PairFolder, PairSource, PairStream, PairTransform, stream_loader
from tcmoa.guided import TASK_RULES, focus_target_loss, guided_training_image, prompt_share, token_share
from tcmoa.losses import task_loss
from tcmoa.model import TCMoA, decode_to_image01
from tcmoa.run_state import (CheckpointStore, MetricsLog, RunStateError, all_mean, atomic_write,
                             distributed, gather, parameter_groups, record_config, rng_state, seed_rank,
                             set_rng_state, tensors_digest, warmup_cosine_lr)
from tcmoa.synth import SyntheticPairs, folder_photos, skimage_photos
from tcmoa.train_config import DataEntry, TrainConfig, focus_target_weights

# Config fields that define a run: a resume must not change them.
_RUN_DEFINING = ("model", "backbone", "init", "seed", "crop", "crop_scales", "flip", "batch_size", "epochs",
                 "iters_per_epoch", "warmup_epochs", "lr", "min_lr", "weight_decay", "betas", "clip_grad",
                 "ema_decay", "guided_loss", "focus_target", "focus_relative", "reference_loss", "data",
                 "anchor", "anchor_shares")


# --- data ---------------------------------------------------------------------------------------------
def build_pair_source(task: str, entries: Sequence[DataEntry], seed: int = 0) -> PairSource:
    sources: list[PairSource] = []
    for entry in entries:
        if entry.path is not None:
            sources.append(PairFolder(entry.path, task=task, split=entry.split))
        else:
            photos = skimage_photos() if entry.synthetic == "skimage" else folder_photos(entry.synthetic)
            sources.append(SyntheticPairs(task, photos, count=entry.count, seed=seed))
    return sources[0] if len(sources) == 1 else ConcatPairs(sources)


def learning_rate(config: TrainConfig, step: int, iters_per_epoch: int) -> float:
    return warmup_cosine_lr(step, iters_per_epoch, config.lr, config.min_lr, config.warmup_epochs, config.epochs)


# --- EMA ----------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of the trainable weights; it is what gets exported and evaluated.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates, so a short
    fine-tune's average is not dominated by the initial weights.
    """

    def __init__(self, named: Sequence[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in named}

    @torch.no_grad()
    def update(self, named: Sequence[tuple[str, torch.nn.Parameter]]) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, param in named:
            self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Temporarily put the averaged weights into the model (restored exactly afterwards)."""
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.shadow}
        with torch.no_grad():
            for n, value in self.shadow.items():
                params[n].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for n, value in saved.items():
                    params[n].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise RunStateError("the checkpoint's EMA holds different parameters than this model")
        self.updates = int(state["updates"])
        for n, value in state["shadow"].items():
            self.shadow[n].copy_(value)


# --- helpers ------------------------------------------------------------------------------------------
def _load_same_config(path: pathlib.Path, model: TCMoA) -> TCMoA:
    """Our weights file as a model, refused unless its config is the run's (the name aside)."""
    source, _ = load_model(path)
    if source.config.to_dict() | {"name": ""} != model.config.to_dict() | {"name": ""}:
        raise ValueError(f"{path}: its model config ({source.config.name}) differs from the run's "
                         f"({model.config.name})")
    return source


def _load_init(model: TCMoA, path: pathlib.Path, require_backbone: bool) -> None:
    """Start from earlier weights: ours (.safetensors) or a released TC-MoA checkpoint."""
    if path.suffix == ".safetensors":
        model.load_state_dict(_load_same_config(path, model).state_dict())
    else:
        load_reference_checkpoint(model, path, require_backbone=require_backbone)


# Run-defining fields added later, with the value that runs saved before them had.
_ADDED_DEFAULTS = {"guided_loss": 0.0, "focus_target": {}, "focus_relative": {}, "reference_loss": 1.0,
                   "anchor": None, "anchor_shares": {}}


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    saved = {**_ADDED_DEFAULTS, **saved}
    saved["focus_target"] = focus_target_weights(saved["focus_target"])  # runs saved with one MFF weight
    return [f"{k}: checkpoint {saved.get(k)!r} != now {current.get(k)!r}"
            for k in _RUN_DEFINING if saved.get(k) != current.get(k)]


@dataclass
class StepReport:
    """What callbacks see after every step (on every rank)."""

    step: int  # steps completed
    total_steps: int
    epoch: int
    lr: float
    metrics: dict[str, float]  # averaged over ranks on log steps, this rank's otherwise
    logged: bool
    rank: int
    world_size: int


@dataclass
class TrainResult:
    run_dir: pathlib.Path
    weights: pathlib.Path | None  # final EMA weights (rank 0), None on other ranks
    steps: int
    metrics: dict[str, float]


class _Trainer:
    def __init__(self, config: TrainConfig, device: torch.device | None, progress: bool):
        self.config = config
        self.rank, self.world = distributed()
        self.device = resolve_device(device or config.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL collectives (all_gather_object) use the current device
        self.autocast = autocast_dtype(resolve_precision(config.precision, self.device))
        self.progress = progress and self.rank == 0
        if config.threads:
            torch.set_num_threads(config.threads)

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        model = TCMoA(get_config(config.model))
        if config.init is not None:
            _load_init(model, config.init, require_backbone=config.backbone is None)
        if config.backbone is not None:  # an explicit backbone wins over the one in `init`
            load_mae_weights(model, config.backbone)
        self.model = model.to(self.device).train()
        # A frozen copy whose prompt shares the tasks in anchor_shares are held to.
        self.anchor = None
        if config.anchor_shares:
            self.anchor = _load_same_config(config.anchor, model).to(self.device).eval().requires_grad_(False)
        self.trainable = self.model.trainable_parameters()
        self.backbone_sha = tensors_digest(self.model, self.model.backbone_state_names())
        # Where the weights came from, for the exported files' provenance.
        sources = {"init": config.init, "anchor": config.anchor if config.anchor_shares else None}
        self.lineage = {name: {"file": f"{path.parent.name}/{path.name}", "sha256": file_sha256(path)}
                        for name, path in sources.items() if path}

        self.sources = {t: build_pair_source(t, config.data[t], config.seed) for t in config.tasks}
        self.transforms = {t: PairTransform(config.crop, config.crop_scales[t], config.flip) for t in config.tasks}
        per_rank_batches = [math.ceil((len(s) // self.world) / config.batch_size) for s in self.sources.values()]
        self.iters_per_epoch = config.iters_per_epoch or max(per_rank_batches)
        self.total_steps = config.epochs * self.iters_per_epoch
        self.end_step = min(self.total_steps, config.max_steps) if config.max_steps else self.total_steps

        self.optimizer = torch.optim.AdamW(parameter_groups(self.trainable, config.weight_decay), lr=config.lr,
                                           betas=config.betas, weight_decay=config.weight_decay)
        self.ema = EMA(self.trainable, config.ema_decay) if config.ema_decay else None
        self.run_dir = config.run_dir
        self.store = CheckpointStore(self.run_dir / "checkpoints", config.keep_checkpoints)

    # --- state ---------------------------------------------------------------------------------
    def _state(self, step: int) -> dict[str, Any]:
        rng = gather(rng_state(), self.world)  # collective: every rank calls it
        return {
            "step": step, "epoch": step // self.iters_per_epoch, "iters_per_epoch": self.iters_per_epoch,
            "world_size": self.world,
            "trainable": {n: p.detach().cpu().clone() for n, p in self.trainable},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"kind": "warmup-half-cosine", "lr": self.config.lr, "min_lr": self.config.min_lr,
                          "warmup_epochs": self.config.warmup_epochs, "epochs": self.config.epochs},
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": rng,
            # Samples consumed per rank and task; the data stream is a pure function of it.
            "data_position": {t: step * self.config.batch_size for t in self.config.tasks},
            "backbone_sha256": self.backbone_sha,
            "config": self.config.to_dict(),
        }

    def _restore(self, state: dict[str, Any]) -> int:
        where = self.store.pointer
        if state["world_size"] != self.world:
            raise RunStateError(f"{where}: written by {state['world_size']} workers; resume with the same number "
                              f"(now {self.world}) or start a new run_dir")
        problems = _config_differences(state["config"], self.config.to_dict())
        if problems:
            raise RunStateError(f"{where}: the config changed since the checkpoint:\n  - " + "\n  - ".join(problems))
        if state["backbone_sha256"] != self.backbone_sha:
            raise RunStateError(f"{where}: the frozen backbone differs from the one the run started with")
        params = dict(self.trainable)
        with torch.no_grad():
            for n, value in state["trainable"].items():
                params[n].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"][self.rank])
        return int(state["step"])

    def _export(self, path: pathlib.Path, step: int) -> None:
        backbone = (str(self.config.backbone) if self.config.backbone
                    else "from init" if self.config.init else "random")
        provenance = {"trained_steps": step, "total_steps": self.total_steps, "ema": bool(self.ema),
                      "backbone": backbone, "backbone_sha256": self.backbone_sha, **self.lineage,
                      "tasks": self.config.tasks, "seed": self.config.seed}
        with self.ema.applied(self.model) if self.ema else contextlib.nullcontext():
            save_model(self.model, path, provenance=provenance)

    def _checkpoint(self, step: int) -> None:
        state = self._state(step)
        if self.rank == 0:
            self.store.save(step, state, lambda path: self._export(path, step))
        if self.world > 1:
            dist.barrier()

    # --- one task step -------------------------------------------------------------------------
    def _task_step(self, net: torch.nn.Module, task: str, batch: dict, epoch: int, step: int) -> dict[str, float]:
        device = self.device
        a, b = batch["a"].to(device, non_blocking=True), batch["b"].to(device, non_blocking=True)
        a01, b01 = batch["a01"].to(device, non_blocking=True), batch["b01"].to(device, non_blocking=True)
        anchor_weight = self.config.anchor_shares.get(task, 0.0)
        with torch.autocast(device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            out = net(a, b, task)
            if anchor_weight:  # the frozen anchor's shares on the same batch, same precision
                with torch.no_grad():
                    held = token_share(self.anchor(a, b, task))
        fused01 = decode_to_image01(out.pred, tuple(a.shape[-2:]))
        terms = task_loss(task, fused01, a01, b01, out, epoch, self.config.warmup_epochs)
        terms["loss"] = self.config.reference_loss * terms["loss"]
        if self.config.guided_loss:
            share = prompt_share(out, tuple(a.shape[-2:]))
            guided01 = guided_training_image(a01, b01, share, TASK_RULES[task])
            terms["guided_loss"] = task_loss(task, guided01, a01, b01, out, epoch, self.config.warmup_epochs)["loss"]
            terms["loss"] = terms["loss"] + self.config.guided_loss * terms["guided_loss"]
        focus_weight = self.config.focus_target.get(task, 0.0)
        shares = token_share(out) if focus_weight or anchor_weight else None  # once for both targets
        if focus_weight:
            relative = self.config.focus_relative.get(task, 0.0)
            terms["focus_target_loss"] = focus_target_loss(shares, a01.float(), b01.float(), relative)
            terms["loss"] = terms["loss"] + focus_weight * terms["focus_target_loss"]
        if anchor_weight:
            terms["anchor_loss"] = ((shares - held) ** 2).mean()
            terms["loss"] = terms["loss"] + anchor_weight * terms["anchor_loss"]
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step + 1}, task {task}: the loss is {float(loss)}; "
                                     f"resume from the last checkpoint with a lower lr or clip_grad")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        values = {f"{task}/{k}": float(v.detach()) for k, v in terms.items()}
        if self.config.clip_grad:
            norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable], self.config.clip_grad)
            values[f"{task}/grad_norm"] = float(norm)
        self.optimizer.step()
        if self.ema:
            self.ema.update(self.trainable)
        return values

    # --- samples -------------------------------------------------------------------------------
    @torch.no_grad()
    def _write_samples(self, step: int) -> None:
        folder = self.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[]), (self.ema.applied(self.model) if self.ema else contextlib.nullcontext()):
                for task in self.config.tasks:
                    a, b, _ = self.sources[task].load(0)
                    view = self.transforms[task].center(a, b)
                    out = self.model(view["a"][None].to(self.device), view["b"][None].to(self.device), task)
                    fused = decode_to_image01(out.pred, (self.config.crop, self.config.crop))[0].cpu()
                    strip = torch.cat([view["a01"], view["b01"], fused], dim=2)
                    pixels = (strip.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
                    target = folder / f"step_{step:08d}_{task}.png"
                    atomic_write(target, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
        finally:
            self.model.train(was_training)

    # --- loop ----------------------------------------------------------------------------------
    def run(self, resume: bool, callbacks: Sequence[Callable[[StepReport], None]]) -> TrainResult:
        config = self.config
        state = self.store.latest()
        if state is not None and not resume:
            raise RunStateError(f"{self.run_dir}: holds checkpoints (last at step {state['step']}); resume it or "
                              f"choose another run_dir")
        start = 0
        if state is not None:
            start = self._restore(state)
        else:
            seed_rank(config.seed, self.rank)  # router noise differs per rank; the weights already match
        if self.rank == 0:
            record_config(self.run_dir, config.to_dict())

        net: torch.nn.Module = self.model
        if self.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # The buffers are constants (index tables, the MoA normal): no need to sync them every forward.
            net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids,
                                                            forward_sync_buffers=False)
        loaders = {
            t: iter(stream_loader(PairStream(self.sources[t], self.transforms[t], task_index(t), config.seed,
                                             self.rank, self.world),
                                  config.batch_size, start, config.num_workers, self.device.type == "cuda"))
            for t in config.tasks
        }
        log = MetricsLog(self.run_dir, start, self.rank == 0)
        metrics: dict[str, float] = {}
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.end_step, initial=start, desc="train", unit="step", dynamic_ncols=True)
        try:
            tic, cpu_tic = time.perf_counter(), time.process_time()
            for step in range(start, self.end_step):
                epoch = step // self.iters_per_epoch
                lr = learning_rate(config, step, self.iters_per_epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                metrics = {}
                for task in config.tasks:
                    metrics.update(self._task_step(net, task, next(loaders[task]), epoch, step))
                done = step + 1
                logged = done % config.log_every == 0 or done == self.end_step
                if logged:
                    metrics = all_mean(metrics, self.world, self.device)
                    # Wall and CPU seconds since the loop started: cpu/wall well below the thread count
                    # means the machine is shared or the data loading stalls.
                    log.write({"step": done, "epoch": epoch, "lr": lr, "seconds": round(time.perf_counter() - tic, 3),
                               "cpu_seconds": round(time.process_time() - cpu_tic, 3), **metrics})
                for callback in callbacks:
                    callback(StepReport(done, self.total_steps, epoch, lr, metrics, logged, self.rank, self.world))
                if done % config.checkpoint_every == 0 or done == self.end_step:
                    self._checkpoint(done)
                if self.rank == 0 and config.sample_every and done % config.sample_every == 0:
                    self._write_samples(done)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({t: f"{metrics[f'{t}/loss']:.3f}" for t in config.tasks}, refresh=False)
        finally:
            if bar is not None:
                bar.close()
            log.close()

        final = None
        if self.rank == 0:
            final = self.run_dir / "final.safetensors"
            self._export(final, self.end_step)
        return TrainResult(self.run_dir, final, self.end_step, metrics)


def export_latest(run_dir: "str | pathlib.Path", output: "str | pathlib.Path",
                  dtype: torch.dtype | None = torch.float16, notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy the last complete checkpoint's weights of a training run (a finished run's
    final.safetensors, else the newest checkpoint: EMA weights) to `output`, fp16 by default so a
    shipped file stays small. Safe while the run goes on: checkpoints are complete once listed.
    `notes` go into the file's provenance (e.g. the recommended reconstruction mode).
    Returns what was exported (source, step, output, sha256, bytes)."""
    run_dir = pathlib.Path(run_dir)
    if run_dir.is_file():  # a weights file itself (stored again, e.g. with a recommended reconstruction)
        source, step, origin = run_dir, None, {}
    else:
        candidates = []  # (step, preference, file): the newest wins, final.safetensors on a tie
        latest = CheckpointStore(run_dir / "checkpoints", keep=0).latest_weights()
        if latest is not None:
            candidates.append((latest[0], 0, latest[1]))
        final = run_dir / "final.safetensors"
        if final.is_file():
            candidates.append((int(read_metadata(final)["provenance"].get("trained_steps", 0)), 1, final))
        if not candidates:
            raise RunStateError(f"{run_dir}: no checkpoint yet (no checkpoints/latest.json, no final.safetensors)")
        step, _, source = max(candidates)
        origin = {"exported_from": f"{run_dir.name}/{source.relative_to(run_dir)}"}
    model, meta = load_model(source)
    if step is None:
        step = int(meta["provenance"].get("trained_steps", 0))
    provenance = {**meta["provenance"], **origin, "source_sha256": meta["sha256"],
                  "stored_as": str(dtype or torch.float32).replace("torch.", ""), **(notes or {})}
    sha = save_model(model, output, provenance, dtype=dtype)
    return {"source": str(source), "step": step, "output": str(output), "sha256": sha,
            "bytes": pathlib.Path(output).stat().st_size}


def train(config: TrainConfig, *, resume: bool = True, device: "torch.device | str | None" = None,
          callbacks: Sequence[Callable[[StepReport], None]] = (), progress: bool = True) -> TrainResult:
    """Train (or resume training) as `config` says. Under torch.distributed every rank calls this."""
    dev = torch.device(device) if isinstance(device, str) else device
    return _Trainer(config, dev, progress).run(resume, callbacks)
