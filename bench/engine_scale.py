"""Engine memory and scaling: fuse generated uint16 GeoTIFF pairs of growing size.

    python bench/engine_scale.py                                   # 2048 8192 16384 with the tiny model
    python bench/engine_scale.py 2048 4096 --weights random:tiny   # what 2 CPU cores manage in minutes
    python bench/engine_scale.py 2048 8192 16384 --weights baseline:average   # the engine itself at full size

Each size runs in its own process, so its peak resident memory (ru_maxrss) is its own; the figures
of all sizes are printed together with the ratios the targets are stated in: peak memory flat
(< 2.5 GB at 16384^2) and time per megapixel within 15% across sizes, in wall-clock time and in
CPU time of the run (user + system, all threads), which other load on a shared machine disturbs less. Time per tile is printed too:
the number of tiles per megapixel differs a little between sizes (border tiles of the padded grid,
halo tiles recomputed at block edges), which is geometry, not engine overhead.
Each child runs one warm-up model batch before the timed run (a per-process cost, paid once by
an archive run). Inputs are generated once under --workdir (default /tmp/tcmoa-bench-scale) and reused.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np


def generate_pair(workdir: pathlib.Path, size: int) -> tuple[pathlib.Path, pathlib.Path]:
    """A uint16 optical-like (1 band) and thermal-like (1 band) pair, written row band by row band."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    paths = (workdir / f"s{size}_optical.tif", workdir / f"s{size}_thermal.tif")
    if all(p.exists() for p in paths):
        return paths
    workdir.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint16", "crs": "EPSG:32633",
               "transform": from_origin(500000, 5000000, 10, 10), "tiled": True, "blockxsize": 512, "blockysize": 512,
               "compress": "deflate", "bigtiff": "IF_SAFER"}
    rng = np.random.default_rng(size)
    rows = 1024
    x = np.arange(size, dtype=np.float32)[None, :]
    with rasterio.open(paths[0], "w", **profile) as optical, rasterio.open(paths[1], "w", **profile) as thermal:
        for y0 in range(0, size, rows):
            y = np.arange(y0, min(y0 + rows, size), dtype=np.float32)[:, None]
            texture = np.sin(x / 37.0) * np.cos(y / 23.0) + 0.5 * np.sin((x + y) / 91.0)
            noise = rng.standard_normal((y.shape[0], size)).astype(np.float32)
            optical.write((12000 + 3000 * texture + 400 * noise).astype(np.uint16)[None], window=Window(0, y0, size, y.shape[0]))
            heat = np.cos(x / 301.0) * np.sin(y / 257.0)
            thermal.write((25000 + 4000 * heat - 1500 * texture + 300 * noise).astype(np.uint16)[None], window=Window(0, y0, size, y.shape[0]))
    return paths


def current_rss_gb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def run_one(args) -> dict:
    """In a child process: fuse one size, print the figures as JSON."""
    from pipeline.runners.local import load_model_fuser, run_job
    from pipeline.manifest import RunDir
    from pipeline.spec import ModelSpec, parse_job

    workdir = pathlib.Path(args.workdir)
    size = args.child
    run_dir = workdir / f"run{size}-{args.weights.replace(':', '_')}"
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    fuser = load_model_fuser(ModelSpec(weights=args.weights, batch_size=args.batch_size))
    # one warm-up batch: the first call of a process pays one-time setup (kernel selection,
    # allocations) that a long archive run pays once, not per megapixel
    warm = np.random.default_rng(0).random((args.batch_size, args.tile, args.tile, 1), dtype=np.float32)
    fuser.fuse_batch(warm, warm, "vif")
    rss_model = current_rss_gb()
    job = parse_job({
        "name": f"scale{size}", "task": "vif",
        "discover": {"type": "glob", "root": str(workdir)},
        "sources": [{"role": "optical", "pattern": f"s{size}_optical.tif"}, {"role": "thermal", "pattern": f"s{size}_thermal.tif"}],
        "tiling": {"tile": args.tile, "overlap": args.overlap, "block": args.block},
        "model": {"weights": args.weights, "batch_size": args.batch_size},
        "output": {"formats": args.formats, "chunk": 512},
        "run_dir": str(run_dir),
    }, base=workdir)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, start = usage.ru_utime + usage.ru_stime, time.perf_counter()
    summary = run_job(job, fuser=fuser, progress=not args.quiet)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    if summary.failures:
        raise SystemExit(f"run failed: {summary.failures}")
    timings = [json.loads(r["timings"]) for r in RunDir(run_dir).records().to_pylist() if r["kind"] == "unit"]
    parts = {k: sum(t.get(k, 0.0) for t in timings) for k in ("read_s", "model_s", "blend_s", "write_s")}
    mpx = size * size / 1e6
    result = {
        "size": size, "mpx": mpx, "seconds": seconds, "model_s_per_tile": parts["model_s"] / summary.tiles, "s_per_mpx": seconds / mpx, "cpu_s_per_mpx": cpu / mpx, "tiles": summary.tiles,
        "tiles_per_mpx": summary.tiles / mpx, "s_per_tile": seconds / summary.tiles, "units": summary.units_run,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, "rss_after_model_gb": rss_model,
        "export_s": seconds - sum(parts.values()), **parts,
    }
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[2048, 8192, 16384])
    parser.add_argument("--weights", default="random:tiny", help="fuser spec: random:tiny, default, a weights file, baseline:average")
    parser.add_argument("--tile", type=int, default=448)
    parser.add_argument("--overlap", type=int, default=112)
    parser.add_argument("--block", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--formats", nargs="+", default=["zarr", "cog"])
    parser.add_argument("--workdir", default="/tmp/tcmoa-bench-scale")
    parser.add_argument("--keep", action="store_true", help="keep run directories and outputs")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return

    results = []
    for size in args.sizes:
        t0 = time.perf_counter()
        generate_pair(pathlib.Path(args.workdir), size)
        print(f"[{size}^2] inputs ready ({time.perf_counter() - t0:.0f} s); fusing with {args.weights} ...", flush=True)
        command = [sys.executable, __file__, "--child", str(size), "--weights", args.weights, "--tile", str(args.tile),
                   "--overlap", str(args.overlap), "--block", str(args.block), "--batch-size", str(args.batch_size),
                   "--workdir", args.workdir, "--formats", *args.formats, *(["--keep"] if args.keep else []),
                   *(["--quiet"] if args.quiet else [])]
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"size {size} failed (exit {proc.returncode})")
        results.append(json.loads(lines[-1][len("RESULT "):]))
        r = results[-1]
        print(f"[{size}^2] {r['seconds']:.1f} s, peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)

    print(f"\nengine scale, fuser {args.weights}, tile {args.tile}, overlap {args.overlap}, block {args.block}, batch {args.batch_size}")
    header = f"{'size':>7}{'Mpx':>8}{'seconds':>9}{'s/Mpx':>8}{'cpu s/Mpx':>10}{'tiles':>7}{'tiles/Mpx':>10}{'s/tile':>8}{'model s/tile':>13}{'model s':>9}{'read s':>8}{'blend s':>8}{'write s':>8}{'export s':>9}{'peak GB':>8}{'model GB':>9}"
    print(header)
    for r in results:
        print(f"{r['size']:>7}{r['mpx']:>8.1f}{r['seconds']:>9.1f}{r['s_per_mpx']:>8.2f}{r['cpu_s_per_mpx']:>10.2f}{r['tiles']:>7}{r['tiles_per_mpx']:>10.2f}"
              f"{r['s_per_tile']:>8.3f}{r['model_s_per_tile']:>13.3f}{r['model_s']:>9.1f}{r['read_s']:>8.1f}{r['blend_s']:>8.1f}{r['write_s']:>8.1f}"
              f"{r['export_s']:>9.1f}{r['peak_rss_gb']:>8.2f}{r['rss_after_model_gb']:>9.2f}")
    if len(results) > 1:
        per_mpx = [r["s_per_mpx"] for r in results]
        per_tile = [r["s_per_tile"] for r in results]
        peaks = [r["peak_rss_gb"] for r in results]
        cpu_per_mpx = [r["cpu_s_per_mpx"] for r in results]
        print(f"time per Mpx: max/min = {max(per_mpx) / min(per_mpx):.3f} wall, "
              f"{max(cpu_per_mpx) / min(cpu_per_mpx):.3f} cpu (target <= 1.15)")
        print(f"time per tile: max/min = {max(per_tile) / min(per_tile):.3f}")
        largest = max(results, key=lambda r: r["size"])
        print(f"peak memory: max/min = {max(peaks) / min(peaks):.2f}; largest size {largest['size']}^2: "
              f"{largest['peak_rss_gb']:.2f} GB (target < 2.5 GB at 16384^2)")


if __name__ == "__main__":
    main()
