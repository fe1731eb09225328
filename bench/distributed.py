"""The Ray runner against the in-process one, and a projection to GPU clusters.

    python bench/distributed.py                       # 6 scenes of 1024^2, tiny model, this machine
    python bench/distributed.py --scenes 12 --size 2048 --weights random:base
    python bench/distributed.py --gpu-tiles-per-s 60  # the GPU tile rate the projection assumes

Printed in one run, on the same generated archive (uint16 optical + thermal GeoTIFF pairs) and the
same model:
1. in-process (`--local`) against Ray with 1 model worker: steady-state throughput (units done per
   second between the first and the last unit done, so Ray's start and the model's load are
   printed apart, as the fixed costs they are) and Ray's overhead (target <= 10%);
2. each Ray worker's model busy fraction: seconds its model stage was busy / its wall time from
   its first unit's start to its last unit's end (target >= 90% once reading and writing overlap
   the model, which they do on a GPU; on a CPU the stages share the same cores);
3. Ray with 2 workers;
4. a projection to 8 and 64 GPU workers from the measured per-unit read, blend + write times and a
   GPU tile rate (measured when this machine has a GPU, else the stated --gpu-tiles-per-s), with
   every assumption printed.

Equal threads per model keep in-process and Ray comparable (--threads, default 1, for the
in-process model and for each Ray worker's).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def make_archive(root: pathlib.Path, scenes: int, size: int) -> None:
    from engine_scale import generate_pair

    for i in range(scenes):
        optical, thermal = generate_pair(root / "gen", size)
        for src, role in ((optical, "optical"), (thermal, "thermal")):
            dst = root / "archive" / f"scene{i}_{role}.tif"
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst)


def job_document(root: pathlib.Path, name: str, args) -> dict:
    return {
        "name": name, "task": "vif", "run_dir": str(root / "runs" / name),
        "discover": {"type": "glob", "root": str(root / "archive")},
        "sources": [{"role": "optical", "pattern": "{scene}_optical.tif", "normalise": {"method": "percentile"}},
                    {"role": "thermal", "pattern": "{scene}_thermal.tif", "normalise": {"method": "percentile"}}],
        "reference": "optical",
        "tiling": {"tile": args.tile, "overlap": args.overlap, "block": args.block},
        "model": {"weights": args.weights, "batch_size": args.batch_size},
        "output": {"dir": str(root / "out" / name), "formats": ["zarr"], "chunk": args.block},
    }


def unit_records(run_dir: pathlib.Path) -> list[dict]:
    from pipeline.manifest import RunDir

    return [r for r in RunDir(run_dir).records().to_pylist() if r["kind"] == "unit" and r["status"] == "done"]


def steady_rate(records: list[dict]) -> float:
    """Units per second between the first and the last unit done (start-up costs excluded)."""
    ends = sorted(r["finished"].timestamp() for r in records)
    return (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else float("nan")


def per_unit(records: list[dict]) -> dict[str, float]:
    timings = [json.loads(r["timings"]) for r in records]
    keys = ("read_s", "model_s", "blend_s", "write_s", "tiles", "pixels")
    return {k: statistics.median(t.get(k, 0.0) for t in timings) for k in keys}


def run_local(root: pathlib.Path, args) -> dict:
    import torch

    from pipeline.runners.local import run_job
    from pipeline.spec import parse_job

    torch.set_num_threads(args.threads)
    job = parse_job(job_document(root, "local", args), base=root)
    start = time.perf_counter()
    summary = run_job(job, progress=False)
    wall = time.perf_counter() - start
    records = unit_records(job.run_dir)
    return {"wall_s": wall, "units": summary.units_run, "rate": steady_rate(records), "per_unit": per_unit(records)}


def run_ray(root: pathlib.Path, args, workers: int) -> dict:
    from pipeline.runners.ray import Pool, run_job, worker_stats
    from pipeline.spec import parse_job

    job = parse_job(job_document(root, f"ray{workers}", args), base=root)
    pool = Pool()
    samples: list[tuple[float, float]] = []  # (wall clock, this process's CPU seconds): the driver's load
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            samples.append((time.time(), time.process_time()))

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.time()
    sampler.start()
    summary = run_job(job, workers=workers, progress=False, pool=pool, threads=args.threads)
    done.set()
    sampler.join()
    wall = time.time() - start
    stats = worker_stats(pool)
    records = unit_records(job.run_dir)
    ends = sorted(r["finished"].timestamp() for r in records)
    steady = [cpu for t, cpu in samples if ends[0] <= t <= ends[-1]]
    driver_s = (steady[-1] - steady[0]) / max(len(ends) - 1, 1) if len(steady) > 1 else float("nan")
    return {"wall_s": wall, "units": summary.units_run, "rate": steady_rate(records), "per_unit": per_unit(records),
            "workers": stats, "start_s": ends[0] - start, "threads": pool.threads, "driver_s_per_unit": driver_s}


def gpu_tile_rate(args) -> tuple[float, str]:
    """Tiles per second of the model on this machine's GPU, or the stated rate."""
    import torch

    if not torch.cuda.is_available():
        return args.gpu_tiles_per_s, f"stated (--gpu-tiles-per-s; no GPU here), model {args.gpu_model}"
    from pipeline.plan import seconds_per_tile
    from pipeline.runners.local import load_model_fuser
    from pipeline.spec import ModelSpec

    fuser = load_model_fuser(ModelSpec(weights=args.gpu_weights, batch_size=args.gpu_batch, device="cuda"))
    seconds = min(seconds_per_tile(fuser, "vif", args.tile, args.tile, args.gpu_batch) for _ in range(3))
    return 1.0 / seconds, f"measured on {torch.cuda.get_device_name()} ({args.gpu_weights}, batch {args.gpu_batch}, {fuser.precision})"


def production_unit(args) -> dict:
    """Tiles and pixels of an average unit of a 10,000^2 scene with the projected block size."""
    from pipeline.tiling import block_grid, make_grid, tiles_for_block

    side = args.project_scene
    grid = make_grid(side, side, args.tile, args.overlap, 112, 0)
    blocks = block_grid(side, side, args.project_block)
    tiles = [len(ys) * len(xs) for ys, xs in (tiles_for_block(grid, b) for b in blocks)]
    return {"tiles": sum(tiles) / len(blocks), "pixels": side * side / len(blocks), "units_per_scene": len(blocks)}


def project(measured: dict, unit: dict, tile_rate: float, workers: int, args) -> dict:
    """Throughput and busy fraction of `workers` GPU workers, each with the measured CPU stages
    scaled per pixel to the projected unit."""
    per_px = {k: measured[k] / measured["pixels"] for k in ("read_s", "blend_s", "write_s")}
    model = unit["tiles"] / tile_rate  # two sources: one model call per tile
    read, blend_write = per_px["read_s"] * unit["pixels"], (per_px["blend_s"] + per_px["write_s"]) * unit["pixels"]
    stage = max(model, read, blend_write)  # the stages overlap; the slowest sets the pace
    per_worker = 1.0 / stage
    limits = {"workers": workers * per_worker,
              "storage": args.storage_gbps * 1e9 / (unit["pixels"] * args.bytes_per_pixel),
              "driver": 1.0 / args.driver_s_per_unit}
    bound = min(limits, key=limits.get)
    rate = limits[bound]
    if bound == "workers":
        bound = "model" if stage == model else ("read" if stage == read else "blend+write")
    return {"model_s": model, "read_s": read, "blend_write_s": blend_write, "busy": model * rate / workers,
            "units_per_s": rate, "mpx_per_s": rate * unit["pixels"] / 1e6, "bound": bound}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--weights", default="random:tiny")
    parser.add_argument("--tile", type=int, default=448)
    parser.add_argument("--overlap", type=int, default=112)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per model, in-process and per Ray worker (on a shared, loaded machine one "
                             "thread avoids OpenMP threads waiting for each other; it also leaves a core for reading and writing)")
    parser.add_argument("--reps", type=int, default=2, help="in-process and 1-worker runs, alternated; the fastest of each counts")
    parser.add_argument("--workdir", default="/tmp/tcmoa-bench-distributed")
    parser.add_argument("--gpu-tiles-per-s", type=float, default=40.0,
                        help="GPU tile rate assumed without a GPU (448^2 tiles, two sources)")
    parser.add_argument("--gpu-model", default="TC-MoA large, bf16, one current data-centre GPU (an assumption, not a measurement)")
    parser.add_argument("--gpu-weights", default="random:large")
    parser.add_argument("--gpu-batch", type=int, default=16)
    parser.add_argument("--project-block", type=int, default=2048, help="block size of the projected units")
    parser.add_argument("--project-scene", type=int, default=10000, help="side of the projected scenes")
    parser.add_argument("--storage-gbps", type=float, default=5.0, help="aggregate bandwidth of the shared storage, GB/s")
    parser.add_argument("--bytes-per-pixel", type=float, default=12.0,
                        help="bytes read + written per output pixel: 4 source bands uint16 in (8), 2 bands uint16 out (4)")
    parser.add_argument("--driver-s-per-unit", type=float, default=None,
                        help="driver CPU time per unit (scheduling, status records); default: measured here")
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)
    root = pathlib.Path(args.workdir)
    make_archive(root, args.scenes, args.size)

    from pipeline.runners.ray import ray_session

    print(f"archive: {args.scenes} scenes of {args.size}^2 (optical + thermal uint16), tile {args.tile}, overlap {args.overlap}, "
          f"block {args.block}, model {args.weights}, batch {args.batch_size}, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    ray_start = time.perf_counter()
    locals_, ones = [], []
    with ray_session():
        ray_up = time.perf_counter() - ray_start
        for rep in range(args.reps):  # alternated: a shared machine's load changes from minute to minute
            for sub in ("runs", "out"):
                shutil.rmtree(root / sub, ignore_errors=True)
            locals_.append(run_local(root, args))
            print(f"  rep {rep + 1}: in-process {locals_[-1]['rate']:.3f} units/s", end="", flush=True)
            ones.append(run_ray(root, args, 1))
            print(f", Ray 1 worker {ones[-1]['rate']:.3f} units/s", flush=True)
        two = run_ray(root, args, 2)
    local = max(locals_, key=lambda r: r["rate"])
    one = max(ones, key=lambda r: r["rate"])
    print(f"in-process: {local['units']} units, {local['rate']:.3f} units/s steady (fastest of {args.reps})")
    print(f"Ray start {ray_up:.1f} s; in a run the first unit is done {one['start_s']:.1f} s after it began "
          f"(plan, item preparation task, actor start, model load): fixed costs, not in the rates")
    print(f"Ray, 1 worker ({one['threads']} threads): {one['rate']:.3f} units/s steady -> {one['rate'] / local['rate']:.3f} of "
          f"in-process throughput, overhead {100 * (1 - one['rate'] / local['rate']):.1f}% (target <= 10%)")
    for label, result in (("1 worker", one), ("2 workers", two)):
        for w in result["workers"]:
            busy = w["model_s"] / w["wall_s"] if w["wall_s"] else float("nan")
            print(f"  {label}: worker pid {w['pid']}: {w['units']} units, model stage busy {100 * busy:.1f}% of {w['wall_s']:.1f} s "
                  f"(target >= 90%; read {w['read_s']:.1f} s, blend+write {w['write_s']:.1f} s overlapped)")
    print(f"Ray, 2 workers ({two['threads']} thread each): {two['rate']:.3f} units/s steady -> {two['rate'] / one['rate']:.2f}x one worker "
          f"({os.cpu_count()} CPU cores: the workers share them)")

    measured = local["per_unit"]
    print(f"\nper unit (median, in-process): {measured['tiles']:.0f} tiles, {measured['pixels'] / 1e6:.2f} Mpx; read {measured['read_s']:.3f} s, "
          f"model {measured['model_s']:.3f} s, blend {measured['blend_s']:.3f} s, write {measured['write_s']:.3f} s")
    args.driver_s_per_unit = args.driver_s_per_unit or two["driver_s_per_unit"]
    tile_rate, where = gpu_tile_rate(args)
    unit = production_unit(args)
    print("\nprojection to GPU workers; assumptions:")
    print(f"  - GPU tile rate {tile_rate:.1f} tiles/s per worker, {where}; one worker per GPU")
    print(f"  - units of {args.project_block}^2 blocks of {args.project_scene}^2 scenes: {unit['tiles']:.1f} tiles, "
          f"{unit['pixels'] / 1e6:.2f} Mpx, {unit['units_per_scene']} units per scene")
    print(f"  - read and blend+write cost per pixel what they cost here (one core each per worker: GDAL decoding, blending, zarr "
          f"compression), and overlap the model (3 units in flight per worker)")
    print(f"  - shared storage moves {args.storage_gbps:.1f} GB/s in all; {args.bytes_per_pixel:.0f} bytes read + written per output pixel")
    print(f"  - the driver spends {args.driver_s_per_unit * 1e3:.2f} ms of CPU per unit (measured here over the 2-worker run's steady "
          f"part): at most {1 / args.driver_s_per_unit:.0f} units/s")
    print(f"  - item preparation (percentile statistics) and export run as tasks on other cores: not counted")
    print(f"{'workers':>8}{'model s/unit':>14}{'read s':>8}{'b+w s':>8}{'busy':>8}{'units/s':>10}{'Mpx/s':>10}{'scenes/h':>10}  bound")
    for n in (1, 8, 64):
        p = project(measured, unit, tile_rate, n, args)
        print(f"{n:>8}{p['model_s']:>14.2f}{p['read_s']:>8.2f}{p['blend_write_s']:>8.2f}{100 * p['busy']:>7.1f}%"
              f"{p['units_per_s']:>10.2f}{p['mpx_per_s']:>10.1f}{3600 * p['units_per_s'] / unit['units_per_scene']:>10.0f}  {p['bound']}")


if __name__ == "__main__":
    main()
