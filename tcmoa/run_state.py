"""What a resumable training run keeps besides its model: RNG states, checkpoint files, the
metrics log, the learning-rate schedule and the torch.distributed helpers.

Shared by `tcmoa.train` (fusion training) and `tcmoa.pretrain` (MAE pre-training).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import random
import uuid
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

STATE_FORMAT = "tcmoa-train-state"
STATE_VERSION = 1


class RunStateError(ValueError):
    """A run directory that cannot be resumed as asked: names the file and the reason."""


# --- schedule -----------------------------------------------------------------------------------------
def warmup_cosine_lr(step: int, iters_per_epoch: int, lr: float, min_lr: float, warmup_epochs: float,
                     epochs: float) -> float:
    """Linear warm-up, then half-cycle cosine to min_lr, evaluated per iteration (MAE's schedule)."""
    epoch = step / iters_per_epoch
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def parameter_groups(named: Sequence[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW groups with weight decay on matrices only: none on biases, norms and other 1-d parameters."""
    def decays(name: str, param: torch.nn.Parameter) -> bool:
        return param.ndim >= 2 and not name.endswith(".bias")

    return [{"params": [p for n, p in named if decays(n, p)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}]


# --- RNG state ------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's RNG states as plain Python values (bytes, ints, lists): they travel through
    all_gather_object and load with torch.load(weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state().numpy().tobytes(),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state().numpy().tobytes()
    return state


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": np_state["bit_generator"],
                         "state": {"key": np.array(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_bytes_tensor(state["cuda"]))


def seed_rank(seed: int, rank: int) -> None:
    """Seed every global RNG for a fresh run; ranks get different streams (e.g. router noise)."""
    torch.manual_seed(seed * 1000 + rank + 1)
    np.random.seed(seed * 1000 + rank + 1)
    random.seed(seed * 1000 + rank + 1)


# --- run directory --------------------------------------------------------------------------------------
def atomic_write(path: pathlib.Path, write: Callable[[str], None]) -> None:
    """Call write(temporary name) beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f"{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # the usual permissions (0666 less the umask), as a new file gets them, restored after the
        # writer: safetensors makes its files owner-only, and a shipped or shared file must be readable
        open(tmp, "xb").close()
        mode = os.stat(tmp).st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def record_config(run_dir: pathlib.Path, config: dict[str, Any]) -> None:
    """Write <run_dir>/config.yaml once: the resolved config the run started with."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.exists():
        text = yaml.safe_dump(config, sort_keys=False)
        atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(text))


class CheckpointStore:
    """Checkpoints of a run: weights + training state per step, and a `latest.json` pointer written
    last, so a crash while saving leaves the previous checkpoint in charge."""

    def __init__(self, folder: pathlib.Path, keep: int, weights_suffix: str = ".safetensors"):
        self.folder, self.keep, self.weights_suffix = folder, keep, weights_suffix
        self.pointer = folder / "latest.json"

    def latest_weights(self) -> tuple[int, pathlib.Path] | None:
        """(step, weights file) of the last complete checkpoint, without reading its training state."""
        if not self.pointer.is_file():
            return None
        try:
            record = json.loads(self.pointer.read_text())
            return int(record["step"]), self.folder / record["weights"]
        except (OSError, ValueError, KeyError) as exc:
            raise RunStateError(f"{self.pointer}: unreadable checkpoint pointer ({exc})") from None

    def latest(self) -> dict[str, Any] | None:
        if not self.pointer.is_file():
            return None
        try:
            record = json.loads(self.pointer.read_text())
            state_path = self.folder / record["state"]
        except (OSError, ValueError, KeyError) as exc:
            raise RunStateError(f"{self.pointer}: unreadable checkpoint pointer ({exc}); remove it to start over") from None
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for missing, truncated or foreign files
            raise RunStateError(f"{state_path}: cannot read the training state ({exc})") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise RunStateError(f"{state_path}: not a tcmoa training state")
        return state

    def save(self, step: int, state: dict[str, Any], export: Callable[[pathlib.Path], None]) -> None:
        stem = f"step_{step:08d}"
        weights, state_file = self.folder / f"{stem}{self.weights_suffix}", self.folder / f"{stem}.state.pt"
        export(weights)
        atomic_write(state_file, lambda tmp: torch.save({"format": STATE_FORMAT, "version": STATE_VERSION, **state}, tmp))
        record = json.dumps({"step": step, "weights": weights.name, "state": state_file.name})
        atomic_write(self.pointer, lambda tmp: pathlib.Path(tmp).write_text(record))
        self._prune(step)

    def _prune(self, current: int) -> None:
        steps = sorted(int(p.name[5:13]) for p in self.folder.glob("step_*.state.pt"))
        for old in steps[:-self.keep]:
            if old != current:
                for suffix in (self.weights_suffix, ".state.pt"):
                    (self.folder / f"step_{old:08d}{suffix}").unlink(missing_ok=True)


class MetricsLog:
    """metrics.jsonl (+ TensorBoard when importable). On resume, records past the checkpoint are
    dropped, so the log holds every step once."""

    def __init__(self, run_dir: pathlib.Path, start_step: int, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tensorboard = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start_step]
            atomic_write(self.path, lambda tmp: pathlib.Path(tmp).write_text("".join(l + "\n" for l in kept)))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tensorboard.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


# --- devices and torch.distributed ----------------------------------------------------------------------
def distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_mean(values: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (a collective: every rank calls it with the same keys)."""
    if world == 1:
        return values
    keys = sorted(values)
    packed = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return {k: float(v) / world for k, v in zip(keys, packed.tolist())}


def gather(obj: Any, world: int) -> list[Any]:
    """Every rank's `obj` (tensor-free), on every rank."""
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def tensors_digest(model: torch.nn.Module, names: Sequence[str]) -> str:
    """sha256 over the named tensors' bytes: proves that frozen weights did not change."""
    state = model.state_dict()
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
