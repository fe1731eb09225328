"""Engine overhead: throughput of a whole engine run against the bare model on the same tiles.

    python bench/engine_overhead.py                       # tiny model, a 2016^2 uint16 pair (36 tiles)
    python bench/engine_overhead.py --size 1008 --reps 5 --weights path/to/weights.safetensors

A first engine run records every batch the engine hands the model. Then, alternating (the
machine is shared and noisy), the bare model fuses exactly those batches, and the engine runs the
whole job again in a fresh run directory: reading the GeoTIFFs, normalising, tiling, the model,
blending, writing Zarr blocks, exporting the COG, manifest records. The ratio is
bare seconds / engine seconds = engine throughput as a share of the model's (target >= 0.85),
from the fastest of the repetitions (the least disturbed by other load) in wall-clock time and in
CPU time of this process (user + system, all threads), which other processes disturb much less.
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import resource
import shutil
import tempfile
import time

import numpy as np


class RecordingFuser:
    """Forwards to a fuser and keeps a copy of every batch it is given."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []
        self.name, self.tile_multiple = inner.name, inner.tile_multiple

    def fuse_batch(self, a, b, task="vif", *, return_prompts=False):
        self.batches.append((a.copy(), b.copy(), task))
        return self.inner.fuse_batch(a, b, task, return_prompts=return_prompts)

    def provenance(self):
        return self.inner.provenance()


@contextlib.contextmanager
def measure(into: dict):
    """Append the wall-clock and CPU seconds (this process, all threads) of the block to `into`."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
    yield
    usage = resource.getrusage(resource.RUSAGE_SELF)
    into["wall"].append(time.perf_counter() - wall0)
    into["cpu"].append(usage.ru_utime + usage.ru_stime - cpu0)


def write_pair(root: pathlib.Path, size: int) -> None:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    texture = np.sin(xx / 37) * np.cos(yy / 23)
    layers = {
        "p_optical.tif": np.stack([12000 + 3000 * texture + 300 * c + 400 * rng.standard_normal((size, size)) for c in range(3)]),
        "p_thermal.tif": (25000 + 4000 * np.cos(xx / 301) - 1500 * texture + 300 * rng.standard_normal((size, size)))[None],
    }
    for name, data in layers.items():
        with rasterio.open(root / name, "w", driver="GTiff", width=size, height=size, count=data.shape[0], dtype="uint16",
                           crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10), tiled=True,
                           blockxsize=512, blockysize=512, compress="deflate") as ds:
            ds.write(data.astype(np.uint16))


def pair_job(root: pathlib.Path, run: str, *, tile: int, overlap: int, block: int, weights: str, batch_size: int,
             chunk: int = 512):
    """The job fusing the pair `write_pair` wrote, run in root/run (outputs in root/run/out)."""
    from pipeline.spec import parse_job

    return parse_job({
        "name": "overhead", "task": "vif", "discover": {"type": "glob", "root": str(root)},
        "sources": [{"role": "optical", "pattern": "{s}_optical.tif"}, {"role": "thermal", "pattern": "{s}_thermal.tif"}],
        "tiling": {"tile": tile, "overlap": overlap, "block": block},
        "model": {"weights": weights, "batch_size": batch_size},
        "output": {"formats": ["zarr", "cog"], "dir": str(root / run / "out"), "chunk": chunk},
        "run_dir": str(root / run),
    }, base=root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2016)
    parser.add_argument("--weights", default="random:tiny")
    parser.add_argument("--tile", type=int, default=448)
    parser.add_argument("--overlap", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from pipeline.runners.local import load_model_fuser, run_job
    from pipeline.spec import ModelSpec

    fuser = load_model_fuser(ModelSpec(weights=args.weights, batch_size=args.batch_size))
    root = pathlib.Path(tempfile.mkdtemp(prefix="tcmoa-overhead-"))
    try:
        write_pair(root, args.size)

        def job(run: str):
            return pair_job(root, run, tile=args.tile, overlap=args.overlap, block=4096, weights=args.weights,
                            batch_size=args.batch_size)

        recorder = RecordingFuser(fuser)
        first = run_job(job("record"), fuser=recorder, progress=False)
        tiles = sum(a.shape[0] for a, _, _ in recorder.batches)
        print(f"{args.size}^2 uint16 pair (3 + 1 bands), tile {args.tile}, overlap {args.overlap}, batch {args.batch_size}, "
              f"fuser {fuser.name} ({args.weights}): {tiles} tiles in {len(recorder.batches)} model calls, "
              f"{first.pixels / 1e6:.2f} Mpx")
        bare, engine = {"wall": [], "cpu": []}, {"wall": [], "cpu": []}
        for rep in range(args.reps):
            with measure(bare):
                for a, b, task in recorder.batches:
                    fuser.fuse_batch(a, b, task)
            with measure(engine):
                summary = run_job(job(f"engine{rep}"), fuser=fuser, progress=False)
            assert summary.items_done == 1 and summary.tiles == tiles
            shutil.rmtree(root / f"engine{rep}", ignore_errors=True)
            print(f"rep {rep}: bare model {bare['wall'][-1]:.2f} s wall / {bare['cpu'][-1]:.2f} s cpu, "
                  f"engine {engine['wall'][-1]:.2f} s wall / {engine['cpu'][-1]:.2f} s cpu", flush=True)
        for clock in ("wall", "cpu"):
            b, e = min(bare[clock]), min(engine[clock])
            print(f"{clock:>4}: bare model {tiles / b:.3f} tiles/s, engine {tiles / e:.3f} tiles/s (fastest of {args.reps}) "
                  f"-> engine / bare throughput = {b / e:.3f} (target >= 0.85)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
