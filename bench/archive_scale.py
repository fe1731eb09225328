"""The arithmetic of docs/scaling.md for an archive of N scenes of S x S px per day.

    python bench/archive_scale.py                          # 10,000 scenes of 10,000^2 px, R = 10 tiles/s per GPU
    python bench/archive_scale.py --gpu-tile-rate 25 --busy 0.9 --window-hours 12
    python bench/archive_scale.py --flops tiny base large  # also count FLOPs per tile pair (large: minutes on a CPU)

Measured here: units, tiles and pixels read per scene for each block size (the engine's own
planner), FLOPs per tile pair (torch's flop counter on one forward pass), and the driver's cost
of appending status records and of reading a run directory's history (RunDir, the manifest code).
Assumed (printed as such, replace with measured figures): the GPU tile rate R and the busy
fraction b. Derived: GPUs needed, bytes moved per day, status records per second.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import shutil
import tempfile
import time


def plan_figures(size: int, tile: int, overlap: int, block: int, multiple: int = 112) -> dict:
    from pipeline.tiling import block_grid, make_grid, read_window, tiles_for_block

    grid = make_grid(size, size, tile, overlap, multiple)
    tiles = read = largest = 0
    blocks = block_grid(size, size, block)
    for b in blocks:
        ys, xs = tiles_for_block(grid, b)
        tiles += len(ys) * len(xs)
        y0, y1, x0, x1 = read_window(grid, ys, xs)
        read += (y1 - y0) * (x1 - x0)
        largest = max(largest, (y1 - y0) * (x1 - x0))
    return {"block": block, "units": len(blocks), "tiles": tiles, "grid_tiles": grid.count,
            "read_ratio": read / size**2, "largest_read_px": largest}


def flops_per_tile(config: str, tile: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tcmoa.model import TCMoA

    model = TCMoA(config).eval()
    x = torch.zeros(1, 3, tile, tile)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x, x, "vif")
    return counter.get_total_flops()


def status_costs(records: int) -> dict:
    """Seconds to append one part of 1 and of 100 records, and to read `records` records back."""
    from pipeline.manifest import RunDir

    def record(i: int) -> dict:
        return {"kind": "unit", "id": f"u{i:09d}", "item_id": "scene", "collection": "c", "status": "done",
                "checksum": "0" * 64, "seconds": 1.0, "timings": "{}", "info": "{}"}

    root = pathlib.Path(tempfile.mkdtemp(prefix="tcmoa-archive-scale-"))
    try:
        run_dir = RunDir(root / "run")
        run_dir.append([record(-1)])  # warm-up: the first part creates the folder and loads the writer
        start = time.perf_counter()
        for i in range(20):
            run_dir.append([record(i)])
        one = (time.perf_counter() - start) / 20
        start = time.perf_counter()
        for i in range(20):
            run_dir.append([record(1000 + 100 * i + j) for j in range(100)])
        hundred = (time.perf_counter() - start) / 20
        history = RunDir(root / "history")
        for start_id in range(0, records, 100_000):
            history.append([record(start_id + j) for j in range(min(100_000, records - start_id))])
        history.compact()
        start = time.perf_counter()
        latest = history.latest()
        read = time.perf_counter() - start
        assert len(latest) == records
        return {"append_1": one, "append_100": hundred, "latest": read}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=10_000, help="scenes per day")
    parser.add_argument("--size", type=int, default=10_000, help="scene side, px")
    parser.add_argument("--tile", type=int, default=448)
    parser.add_argument("--overlap", type=int, default=112)
    parser.add_argument("--blocks", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--block", type=int, default=4096, help="the block size the day's figures use")
    parser.add_argument("--bands", type=int, nargs=2, default=[3, 1], metavar=("REFERENCE", "OTHER"),
                        help="bands of the two sources (uint16); the output has the reference's")
    parser.add_argument("--gpu-tile-rate", type=float, default=10.0, help="ASSUMPTION: tiles/s per GPU (large, bf16)")
    parser.add_argument("--busy", type=float, default=0.9, help="ASSUMPTION: fraction of time a GPU runs the model")
    parser.add_argument("--window-hours", type=float, default=24.0, help="hours in which a day's scenes must be done")
    parser.add_argument("--flops", nargs="*", default=[], metavar="CONFIG", help="count FLOPs per tile pair of these configs")
    parser.add_argument("--status-records", type=int, default=330_000, help="history size for the read-back timing")
    args = parser.parse_args()

    print(f"archive: {args.scenes:,} scenes/day of {args.size:,} x {args.size:,} px; tile {args.tile}, overlap {args.overlap}")
    print(f"\n{'block':>6}{'units':>7}{'tiles':>7}{'vs grid':>9}{'read/px':>9}{'largest read':>14}   (measured: the engine's planner)")
    plans = {}
    for block in sorted(set(args.blocks) | {args.block}):
        p = plans[block] = plan_figures(args.size, args.tile, args.overlap, block)
        print(f"{block:>6}{p['units']:>7}{p['tiles']:>7}{p['tiles'] / p['grid_tiles']:>8.2f}x{p['read_ratio']:>9.2f}"
              f"{p['largest_read_px'] / 1e6:>10.1f} Mpx")
    plan = plans[args.block]
    ref_bands, other_bands = args.bands
    unit_in = plan["largest_read_px"] * (ref_bands + other_bands) * 4
    unit_out = args.block**2 * ref_bands * 4
    print(f"block {args.block}: a unit's float32 inputs {unit_in / 1e6:.0f} MB, output accumulator {unit_out / 1e6:.0f} MB")

    for config in args.flops:
        print(f"FLOPs per {args.tile}^2 tile pair, {config}: {flops_per_tile(config, args.tile) / 1e9:,.1f} GFLOP (measured)")

    seconds = args.window_hours * 3600
    tiles_day = args.scenes * plan["tiles"]
    tile_rate = tiles_day / seconds
    gpus = tile_rate / (args.gpu_tile_rate * args.busy)
    px_day = args.scenes * args.size**2
    print(f"\nper day: {px_day / 1e12:.2f} Tpx, {tiles_day / 1e6:.2f} M tiles -> {tile_rate:.1f} tiles/s over {args.window_hours:g} h")
    print(f"ASSUMED: R = {args.gpu_tile_rate:g} tiles/s per GPU, busy fraction b = {args.busy:g}")
    print(f"GPUs needed = {tile_rate:.1f} / (R x b) = {gpus:.1f} -> {math.ceil(gpus)} GPU workers")
    out_per_tile = args.size**2 / plan["tiles"]
    print(f"each GPU turns out {args.gpu_tile_rate * out_per_tile / 1e6:.2f} Mpx/s that its node's CPUs must read and write")

    scene_px = args.size**2
    moved = {
        "read (sources, with halo)": scene_px * (ref_bands + other_bands) * 2 * plan["read_ratio"],
        "written: Zarr store": scene_px * ref_bands * 2,
        "written: COG + overviews": scene_px * ref_bands * 2 * 4 / 3,
        "read back for the COG export": scene_px * ref_bands * 2,
    }
    print(f"\n{'bytes moved (raw, uint16)':<32}{'per scene':>12}{'per day':>12}{'sustained':>12}")
    for name, per_scene in moved.items():
        print(f"{name:<32}{per_scene / 1e9:>10.2f} GB{per_scene * args.scenes / 1e12:>10.1f} TB"
              f"{per_scene * args.scenes / seconds / 1e6:>8.0f} MB/s")
    total = sum(moved.values()) * args.scenes
    print(f"{'total':<32}{'':>12}{total / 1e12:>10.1f} TB{total / seconds / 1e6:>8.0f} MB/s")

    records_day = args.scenes * (plan["units"] + 2)
    print(f"\ndriver: {records_day:,} status records/day ({plan['units']} units + prepare + export per scene) "
          f"= {records_day / seconds:.2f} records/s")
    costs = status_costs(args.status_records)
    print(f"measured: append a part of 1 record {costs['append_1'] * 1e3:.0f} ms, of 100 records {costs['append_100'] * 1e3:.0f} ms; "
          f"read {args.status_records:,} records back (RunDir.latest) {costs['latest']:.1f} s "
          f"= {args.status_records / records_day:.1f} days of history")


if __name__ == "__main__":
    main()
