"""Seams at tile borders: the engine's blended tiling against hard tiling like the reference's.

    python bench/seams.py                         # the shipped default model
    python bench/seams.py --weights path/to/weights.safetensors --pairs 6

Three fusions of the same real pairs (MEFB 1200x800 exposure pairs and VIFB visible/infrared pairs
from ../shared/data; the generated sample brackets when ../shared is absent):
  ours   the engine: 448 tiles, >= 112 overlap, Hann blending, tiles flush with the image borders;
  hard   like the reference: 448 tiles, no overlap, the last tile flush with the edge, pasted;
  whole  the whole image in one model call: no tiles, the seam-free yardstick of the measure.
Seam measure: the luminance gradient energy across a line (squared difference between the pixels
on either side), in 32 px segments along it, divided by the same energy of the whole-image fusion
on the same segment: the image content cancels (both fused the same pixels), what is left is what
the tiling changed. Ours is measured on the edges of its own tiles, hard tiling on its seams.
  local index (the target): each border segment's ratio divided by the median ratio of the lines
      3-12 px beside it, median over every segment of every border. A seam is a discontinuity: it
      puts energy on the border line and not beside it. 1.00 = no seam. Target: ours <= 1.05.
  global index: the median ratio over the border segments divided by the median over every
      interior line (32 px or more from any border).
With an untrained model the output is mostly texture that differs from tile to tile: cross-fading
two such textures in the overlaps lowers their gradient energy there, so the interior median of
the global index drops and its border index rises by several percent without any seam; the local
index compares each border with lines in the same blend and is free of that bias.
`--weights baseline:mertens` (exposure fusion with image pyramids: context-dependent like a network,
but deterministic) shows what both indices see when tiles disagree at hard seams.
(Measured directly on the fused image, without the whole-image reference, the ratio is dominated by
what content a handful of border lines happen to cross: +-20% on seam-free images.)
It also runs the engine with a mirrored border pad (--border-pad, default half the overlap) and
prints how far each setting's image-border band is from the whole-image fusion.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import tempfile

import numpy as np

SEGMENT = 32
MARGIN = 32  # interior lines keep this distance from any border
NEAR_MIN, NEAR_MAX = 3, 12  # the lines beside a border line that the local index compares it with
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def load01(path: pathlib.Path) -> np.ndarray:
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return image


def pairs(count: int, workdir: pathlib.Path) -> list[tuple[str, pathlib.Path, pathlib.Path, str]]:
    found = []
    mef = SHARED / "mef" / "MEFB-dev"
    vif = SHARED / "vif" / "VIFB"
    if mef.exists():
        from PIL import Image

        big = [p for p in sorted((mef / "under").iterdir()) if Image.open(p).size[0] >= 1000]
        found += [(p.name, p, mef / "over" / p.name, "mef") for p in big[: (count + 1) // 2]]
        found += [(p.name, p, vif / "ir" / p.name, "vif") for p in sorted((vif / "vi").iterdir())
                  if Image.open(p).size[0] >= 600][: count // 2]
    else:
        from pipeline.samples import write_samples

        write_samples(workdir / "samples")
        for scene in ("astronaut", "coffee", "chelsea")[:count]:
            files = sorted((workdir / "samples" / "brackets").glob(f"{scene}_*.jpg"))
            found.append((scene, files[0], files[-1], "mef"))
    return found[:count]


def hard_starts(length: int, tile: int) -> list[int]:
    starts = list(range(0, max(length - tile, 0) + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)  # the last tile flush with the edge
    return starts


def fuse_hard(fuser, a: np.ndarray, b: np.ndarray, task: str, tile: int) -> tuple[np.ndarray, list[int], list[int]]:
    h, w = a.shape[:2]
    out = np.zeros_like(a)
    ys, xs = hard_starts(h, tile), hard_starts(w, tile)
    for y in ys:
        for x in xs:
            cut = (slice(y, y + tile), slice(x, x + tile))
            out[cut] = fuser.fuse_batch(a[None][(slice(None), *cut)], b[None][(slice(None), *cut)], task).image[0]
    return out, ys[1:], xs[1:]


def fuse_ours(fuser, a_path, b_path, task, tile, overlap, workdir: pathlib.Path, border_pad: int = 0) -> tuple[np.ndarray, list[int], list[int]]:
    import zarr

    from pipeline.plan import plan_job
    from pipeline.runners.local import run_job
    from tcmoa.interface import ModelInfo, Placement
    from pipeline.spec import parse_job

    run = workdir / f"run-{a_path.stem}-pad{border_pad}"
    job = parse_job({
        "name": "seams", "task": task,
        "discover": {"type": "list", "items": [{"item": "x", "a": str(a_path), "b": str(b_path)}]},
        "sources": [{"role": "a", "normalise": "dtype"}, {"role": "b", "normalise": "dtype"}],
        "tiling": {"tile": tile, "overlap": overlap, "block": 4096, "window": "hann", "border_pad": border_pad},
        "output": {"formats": ["zarr"], "dtype": "float32", "scale": "full", "dir": str(run / "out")},
        "run_dir": str(run),
    }, base=workdir)
    grid = plan_job(job, ModelInfo.of(fuser, job.model.weights), Placement("cpu", "fp32")).items[0].tiles
    summary = run_job(job, fuser=fuser, progress=False)
    assert summary.items_done == 1, summary.failures
    fused = zarr.open_group(run / "out" / "x.zarr", mode="r")["fused"][:].transpose(1, 2, 0)
    edges = lambda origins, size, n: sorted({e for o in origins for e in (o, o + size) if 0 < e < n})
    return fused, edges(grid.ys, grid.tile_h, grid.height), edges(grid.xs, grid.tile_w, grid.width)


def _segment_energy(luma: np.ndarray) -> np.ndarray:
    """(lines, segments): mean squared difference across each vertical line c (between columns
    c-1 and c, index c-1), in SEGMENT-long pieces down the line."""
    dx = (luma[:, 1:] - luma[:, :-1]) ** 2
    n = dx.shape[0] // SEGMENT
    return dx[: n * SEGMENT].reshape(n, SEGMENT, -1).mean(axis=1).T


def line_ratios(image: np.ndarray, whole: np.ndarray, rows: list[int], cols: list[int]):
    """For vertical then horizontal lines: (per-line, per-segment energy ratios tiled / whole-image
    fusion (lines, segments), the border lines across that direction)."""
    tiled, reference = (x.mean(axis=-1, dtype=np.float64) for x in (image, whole))
    for transpose, lines in ((False, cols), (True, rows)):
        t, r = (tiled.T, reference.T) if transpose else (tiled, reference)
        yield _segment_energy(t) / np.maximum(_segment_energy(r), 1e-12), lines


def seam_ratios(image: np.ndarray, whole: np.ndarray, rows: list[int], cols: list[int]) -> tuple[list[float], list[float]]:
    """Per-segment energy ratios (tiled / whole-image fusion) on the border lines and on interior lines."""
    border, interior = [], []
    for ratio, lines in line_ratios(image, whole, rows, cols):
        inner = [c for c in range(1, ratio.shape[0] + 1) if all(abs(c - b) >= MARGIN for b in lines)]
        border += list(ratio[[b - 1 for b in lines]].ravel())
        interior += list(ratio[[c - 1 for c in inner]].ravel())
    return border, interior


def border_band_error(image: np.ndarray, whole: np.ndarray, band: int) -> tuple[float, float]:
    """Mean |tiled - whole-image fusion| (in 1/255) in the band of `band` px along the image
    borders and in the rest: how faithful the borders are to a whole-image run."""
    diff = np.abs(image.astype(np.float64) - whole).mean(axis=-1) * 255
    inner = np.zeros(diff.shape, bool)
    inner[band:-band, band:-band] = True
    return float(diff[~inner].mean()), float(diff[inner].mean())


def local_seam_ratios(image: np.ndarray, whole: np.ndarray, rows: list[int], cols: list[int]) -> list[float]:
    """Per segment of each border line: its energy ratio (tiled / whole-image fusion) divided by
    the median ratio of the lines NEAR_MIN..NEAR_MAX px beside it. A seam is a discontinuity: it
    puts energy on the border line itself, not on the lines next to it, while whatever varies
    slowly across the tile (how much of each tile is blended in, the texture a tile happens to
    produce) is the same on the line and beside it and cancels."""
    out: list[float] = []
    for ratio, lines in line_ratios(image, whole, rows, cols):
        for b in lines:
            near = [b + s * d for d in range(NEAR_MIN, NEAR_MAX + 1) for s in (-1, 1)
                    if 1 <= b + s * d <= ratio.shape[0] and all(abs(b + s * d - o) >= NEAR_MIN for o in lines)]
            if near:
                out += list(ratio[b - 1] / np.maximum(np.median(ratio[[n - 1 for n in near]], axis=0), 1e-12))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="default", help="default, random:tiny, a weights file")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--tile", type=int, default=448)
    parser.add_argument("--overlap", type=int, default=112)
    parser.add_argument("--border-pad", type=int, default=None,
                        help="also run the engine with this mirrored border pad (default: half the overlap) "
                             "and compare the image-border bands with the whole-image fusion")
    args = parser.parse_args()
    padded = args.overlap // 2 if args.border_pad is None else args.border_pad

    from pipeline.runners.local import load_model_fuser
    from pipeline.spec import ModelSpec

    fuser = load_model_fuser(ModelSpec(weights=args.weights, batch_size=4))
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="tcmoa-seams-"))
    pooled = {m: ([], []) for m in ("ours", "hard")}
    local = {m: [] for m in ("ours", "hard")}
    bands = {0: [], padded: []}
    try:
        print(f"fuser {fuser.name} ({args.weights}); tile {args.tile}, overlap {args.overlap}")
        print(f"{'pair':<22}{'task':<5}{'size':>10}   global index:{'ours':>7}{'hard':>7}   local index:{'ours':>7}{'hard':>7}")
        for name, a_path, b_path, task in pairs(args.pairs, workdir):
            a, b = load01(a_path), load01(b_path)
            if a.shape != b.shape:
                continue
            ours, o_rows, o_cols = fuse_ours(fuser, a_path, b_path, task, args.tile, args.overlap, workdir)
            hard, h_rows, h_cols = fuse_hard(fuser, a, b, task, args.tile)
            whole = fuser.fuse_batch(a[None], b[None], task).image[0]
            bands[0].append(border_band_error(ours, whole, args.overlap))
            if padded:
                with_pad, _, _ = fuse_ours(fuser, a_path, b_path, task, args.tile, args.overlap, workdir, padded)
                bands[padded].append(border_band_error(with_pad, whole, args.overlap))
            line = f"{name[:21]:<22}{task:<5}{f'{a.shape[1]}x{a.shape[0]}':>10}{'':>16}"
            cases = (("ours", ours, o_rows, o_cols), ("hard", hard, h_rows, h_cols))
            for method, image, rows, cols in cases:
                border, interior = seam_ratios(image, whole, rows, cols)
                pooled[method][0].extend(border)
                pooled[method][1].extend(interior)
                line += f"{np.median(border) / np.median(interior):>7.3f}"
            line += f"{'':>15}"
            for method, image, rows, cols in cases:
                values = local_seam_ratios(image, whole, rows, cols)
                local[method].extend(values)
                line += f"{np.median(values):>7.3f}"
            print(line, flush=True)
        index = {m: np.median(b) / np.median(c) for m, (b, c) in pooled.items()}
        local_index = {m: float(np.median(v)) for m, v in local.items()}
        print(f"{'pooled':<53}{index['ours']:>7.3f}{index['hard']:>7.3f}{'':>15}{local_index['ours']:>7.3f}{local_index['hard']:>7.3f}")
        print(f"border segments: ours {len(pooled['ours'][0])}, hard {len(pooled['hard'][0])}")
        print(f"local seam index (border line vs the lines {NEAR_MIN}-{NEAR_MAX} px beside it): ours {100 * (local_index['ours'] - 1):+.1f}% "
              f"(target within 5%), hard tiling like the reference {100 * (local_index['hard'] - 1):+.1f}%")
        print(f"global index (border lines vs every interior line): ours {100 * (index['ours'] - 1):+.1f}%, "
              f"hard tiling {100 * (index['hard'] - 1):+.1f}%")
        if padded:
            print(f"\nimage borders: mean |engine - whole-image fusion| (1/255) in the outer {args.overlap} px band / the rest")
            for pad, errors in bands.items():
                edge, rest = np.mean(errors, axis=0)
                print(f"  border_pad {pad:>3}: band {edge:.3f}, rest {rest:.3f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
