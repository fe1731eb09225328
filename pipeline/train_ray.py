"""Multi-GPU / multi-node TC-MoA training through Ray Train (TorchTrainer, DDP).

Every Ray Train worker runs the same `tcmoa.train.train` loop on its shard of the data; Ray sets
up the process group (gloo on CPU, NCCL on GPU) and the loop wraps the model in DDP. Checkpoints,
resume, metrics and samples stay in the run directory of the config (our own files, written by
rank 0), so a run started with Ray resumes with or without it; on a multi-node cluster the run
directory and the data must be on a filesystem every node sees. Ray's own run storage (its
bookkeeping) goes to `<run_dir>/ray`.

A failed worker restarts the whole group (`max_failures`); the restarted loop resumes from the
last checkpoint of the run directory.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import ray
import ray.train
import ray.train.torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from tcmoa.run_state import CheckpointStore, RunStateError
from tcmoa.train import StepReport, train
from tcmoa.train_config import ConfigError, TrainConfig, parse_train_config


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; the process group already exists."""
    config = parse_train_config(loop_config["config"], pathlib.Path("/"))
    context = ray.train.get_context()

    def report(step: StepReport) -> None:
        # ray.train.report is a barrier over workers: log steps are the same on every rank.
        if step.logged:
            ray.train.report({"step": step.step, "epoch": step.epoch, "lr": step.lr, **step.metrics})

    train(config, resume=True, device=ray.train.torch.get_device(), callbacks=[report],
          progress=context.get_world_rank() == 0)


def _check_resources(workers: int, gpus_per_worker: float, cpus_per_worker: float) -> None:
    """Ray waits (for a long time) on resources a cluster does not have: fail early instead."""
    available = ray.cluster_resources()
    need = {"CPU": workers * cpus_per_worker, "GPU": workers * gpus_per_worker}
    short = {k: (v, available.get(k, 0)) for k, v in need.items() if v > available.get(k, 0)}
    if short:
        detail = ", ".join(f"{k}: need {v:g}, cluster has {have:g}" for k, (v, have) in short.items())
        raise ConfigError(f"the Ray cluster cannot host {workers} workers ({detail})")


def train_with_ray(config: TrainConfig, workers: int, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
                   resume: bool = True, max_failures: int = 0, address: str | None = None) -> dict[str, Any]:
    """Train with `workers` DDP workers on a Ray cluster (started locally if none is connected).

    Returns the last metrics record of the run. Raises the training error if the run fails.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if gpus_per_worker < 0 or cpus_per_worker <= 0:
        raise ConfigError("gpus_per_worker must be >= 0 and cpus_per_worker > 0")
    existing = CheckpointStore(config.run_dir / "checkpoints", config.keep_checkpoints).pointer
    if not resume and existing.exists():
        raise RunStateError(f"{config.run_dir}: holds checkpoints ({existing}); resume it or choose another run_dir")
    if not ray.is_initialized():
        ray.init(address=address)
    _check_resources(workers, gpus_per_worker, cpus_per_worker)

    resources = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config.to_dict()},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name="ray-train", storage_path=str((config.run_dir / "ray").resolve()),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return last_metrics(config.run_dir)


def last_metrics(run_dir: pathlib.Path) -> dict[str, Any]:
    """The last record of the run's metrics log (what rank 0 logged last), or {}."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else {}
