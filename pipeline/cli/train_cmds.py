"""Training commands: `tcmoa train` (TC-MoA fusion training) and `tcmoa pretrain` (MAE backbone)."""
from __future__ import annotations

import json
import os
import pathlib

import click

_CONFIG = click.Path(exists=True, dir_okay=False, path_type=pathlib.Path)


def _overrides(max_steps: int | None, run_dir: pathlib.Path | None) -> dict:
    overrides: dict = {}
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    if run_dir is not None:
        overrides["run_dir"] = str(run_dir.resolve())
    return overrides


def _user_errors() -> tuple[type[Exception], ...]:
    from tcmoa.checkpoints import CheckpointError
    from tcmoa.run_state import RunStateError
    from tcmoa.train_config import ConfigError

    # ValueError covers unreadable or mismatched data files, named by the data readers.
    return ConfigError, RunStateError, CheckpointError, ValueError, FileNotFoundError


def _init_torchrun() -> None:
    """Under torchrun (WORLD_SIZE > 1) join the process group, so the loop runs as DDP."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, path_type=pathlib.Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None,
              help="Where to write the weights (.safetensors).")
@click.option("--default", "as_default", is_flag=True,
              help="Write them where the package looks for its default weights (weights: default).")
@click.option("--dtype", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="Storage precision of the file (the model computes in fp32 or bf16 either way).")
@click.option("--reconstruction", type=click.Choice(["decoder", "guided"]), default=None,
              help="Record the output mode these weights are measured best with: `reconstruction: auto` (the "
                   "default of every command) then uses it.")
def export(run_dir: pathlib.Path, output: pathlib.Path | None, as_default: bool, dtype: str,
           reconstruction: str | None) -> None:
    """Export the latest weights of a training run (finished or still running) to one file.
    RUN_DIR may also be a weights file (.safetensors): stored again, e.g. with --reconstruction."""
    import torch

    from tcmoa.inference import DEFAULT_WEIGHTS
    from tcmoa.train import export_latest

    if (output is None) == (not as_default):
        raise click.UsageError("give exactly one of -o/--output or --default")
    try:
        done = export_latest(run_dir, DEFAULT_WEIGHTS if as_default else output,
                             torch.float16 if dtype == "fp16" else None,
                             {"reconstruction": reconstruction} if reconstruction else None)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"exported step {done['step']} of {run_dir} to {done['output']} "
               f"({done['bytes'] / 1e6:.1f} MB, sha256 {done['sha256'][:16]}...)")


@click.command("train")
@click.argument("config", type=_CONFIG)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Train with this many Ray Train workers (DDP); omit to train in this process.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
@click.option("--max-failures", type=click.IntRange(min=0), default=0, show_default=True,
              help="Restart the worker group this many times after a failure (resumes from the last checkpoint).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from the run directory's last checkpoint; --no-resume refuses a directory that has one.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=pathlib.Path), default=None,
              help="Override the config's run_dir.")
def train(config: pathlib.Path, workers: int | None, gpus_per_worker: float, cpus_per_worker: float,
          address: str | None, max_failures: int, resume: bool, max_steps: int | None,
          run_dir: pathlib.Path | None) -> None:
    """Train TC-MoA as the YAML CONFIG says (see jobs/train_tiny.yaml), here or on a Ray cluster."""
    from tcmoa.train_config import load_train_config

    try:
        cfg = load_train_config(config, _overrides(max_steps, run_dir))
        if workers is not None:
            from pipeline.train_ray import train_with_ray

            metrics = train_with_ray(cfg, workers, gpus_per_worker, cpus_per_worker, resume=resume,
                                     max_failures=max_failures, address=address)
            steps = metrics.get("step")
        else:
            if gpus_per_worker or address:
                raise click.UsageError("--gpus-per-worker and --address need --workers (Ray Train)")
            from tcmoa.train import train as run_training

            _init_torchrun()
            result = run_training(cfg, resume=resume)
            metrics, steps = result.metrics, result.steps
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    losses = {k: round(v, 4) for k, v in metrics.items() if k.endswith("/loss")}
    click.echo(f"trained {steps} steps; weights: {cfg.run_dir / 'final.safetensors'}; last losses: {json.dumps(losses)}")


@click.command("pretrain")
@click.argument("config", type=_CONFIG)
@click.option("--resume/--no-resume", default=True, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=pathlib.Path), default=None,
              help="Override the config's run_dir.")
def pretrain(config: pathlib.Path, resume: bool, max_steps: int | None, run_dir: pathlib.Path | None) -> None:
    """MAE-pretrain a backbone (see jobs/pretrain_tiny.yaml); `tcmoa train` takes the result as `backbone:`."""
    from tcmoa.pretrain import pretrain as run_pretraining
    from tcmoa.train_config import load_pretrain_config

    try:
        cfg = load_pretrain_config(config, _overrides(max_steps, run_dir))
        _init_torchrun()
        result = run_pretraining(cfg, resume=resume)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"pre-trained {result.steps} steps (last loss {result.loss:.4f}); backbone: {result.backbone}")
