"""Training speed of the tiny TC-MoA at 448 px crops: 1 vs 2 Ray Train workers on CPU (DDP, gloo).

    python bench/train_speed.py [--steps 3] [--warmup 1] [--batch-size 1] [--crop 448]

One step = one optimiser step per task (VIF, MEF, MFF), each on its own batch of `batch-size`
pairs per worker. Data are pairs made on disk beforehand (synthetic MEF/MFF from scikit-image's
photos, a visible/infrared stand-in), so loading is a PNG decode and a crop. Each worker uses one
CPU and one torch thread. Timing comes from the run's own metrics log (seconds since the loop
started at each step), over the steps after the warm-up ones.

Printed: steps/s and pairs/s per configuration, the speed-up in pairs/s, and the scaling
efficiency = pairs/s with 2 workers / (2 x pairs/s with 1 worker). On a shared machine other
processes take cores from the workers; the CPU use of rank 0 shows it, and pairs per CPU-second
give the efficiency of the distributed step itself (DDP all-reduce, Ray reporting) without it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image


def make_pairs(root: pathlib.Path) -> dict[str, str]:
    """Write VIF (vi/ir), MEF (over/under) and MFF (A/B) pair folders; returns task -> folder."""
    from tcmoa.synth import SyntheticPairs, skimage_photos

    photos = skimage_photos(["astronaut", "coffee", "chelsea", "rocket"])
    layouts = {"vif": ("vi", "ir"), "mef": ("over", "under"), "mff": ("A", "B")}
    for task, (side_a, side_b) in layouts.items():
        for side in (side_a, side_b):
            (root / task / side).mkdir(parents=True)
        for i, photo in enumerate(photos):
            if task == "vif":
                a, b = photo, np.repeat(1 - photo.mean(-1, keepdims=True), 3, axis=-1)
            else:
                pair = SyntheticPairs(task, [photo], seed=i).pair(0)
                a, b = pair.a, pair.b
            for side, image in ((side_a, a), (side_b, b)):
                Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(root / task / side / f"{i}.png")
    return {task: str(root / task) for task in layouts}


def seconds_per_step(workers: int, data: dict[str, str], root: pathlib.Path,
                     args: argparse.Namespace) -> tuple[float, float]:
    """(wall seconds, rank 0's CPU seconds) per step, over the timed steps."""
    from pipeline.train_ray import train_with_ray
    from tcmoa.train_config import parse_train_config

    run_dir = root / f"run_{workers}"
    config = parse_train_config({
        "run_dir": str(run_dir), "model": "tiny", "data": data, "crop": args.crop, "batch_size": args.batch_size,
        "epochs": 20, "iters_per_epoch": 100, "max_steps": args.warmup + args.steps, "num_workers": 0,
        "threads": 1, "log_every": 1, "checkpoint_every": 10**6, "sample_every": 0,
    }, root)
    train_with_ray(config, workers=workers)
    records = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    first, last = records[args.warmup], records[args.warmup + args.steps]
    return ((last["seconds"] - first["seconds"]) / args.steps, (last["cpu_seconds"] - first["cpu_seconds"]) / args.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, default=1, help="pairs per task per worker")
    parser.add_argument("--crop", type=int, default=448)
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    temp = pathlib.Path(tempfile.mkdtemp(prefix="tcmoa-bench-"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(temp / "ray"))
        data = make_pairs(temp / "data")
        tasks = len(data)
        wall, cpu = {}, {}
        for workers in (1, 2):
            per_step, cpu_per_step = seconds_per_step(workers, data, temp, args)
            pairs = workers * args.batch_size * tasks
            wall[workers], cpu[workers] = pairs / per_step, pairs / (workers * cpu_per_step)
            print(f"{workers} worker{'s' * (workers > 1)}: {1 / per_step:.4f} steps/s ({per_step:.2f} s/step), "
                  f"{wall[workers]:.3f} pairs/s, CPU use of rank 0 {cpu_per_step / per_step:.0%} of a core  "
                  f"[tiny, {args.crop} px crops, batch {args.batch_size} per task per worker, {tasks} tasks per step]")
        speedup = wall[2] / wall[1]
        print(f"speed-up 2 vs 1 worker (pairs/s): {speedup:.2f}x; scaling efficiency: {speedup / 2:.0%}")
        # Pairs per CPU-second (all workers assumed as busy as rank 0): the cost of DDP itself,
        # without the effect of other processes taking cores.
        print(f"pairs per CPU-second: 1 worker {cpu[1]:.3f}, 2 workers {cpu[2]:.3f}; "
              f"CPU efficiency of 2 workers: {cpu[2] / cpu[1]:.0%}")
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
