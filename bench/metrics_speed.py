"""Time every registered metric on a 640x480 and a 2048x2048 RGB pair.

    python bench/metrics_speed.py                 # presets vifb (per-channel RGB) and standard (luminance)
    python bench/metrics_speed.py --preset mefb --repeat 3 --sizes 640x480

Prints the time of each metric (best of --repeat runs), their sum, and for 640x480 the time of
`evaluate()` with all metrics end to end (preparation and the intermediates metrics share
included), on one thread and on the default threads, with its ratio to the issue's target (all
metrics on a 640x480 pair in under 2 s). `vifb` and `mefb` score an RGB fused image per channel
(three planes, as those toolboxes do); `standard` scores its luminance. The
640x480 pair is VIFB's labMan (visible, infrared, CNN-fused) when ../shared is present, else a
synthetic scene; larger sizes are synthetic. Like `tcmoa eval`, it first raises glibc's mmap and
trim thresholds (pipeline.runtime; --untuned-allocator leaves them): the metrics free and allocate
large maps in turn, and at 2048^2 page faults otherwise take a third of the time.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcmoa.metrics import REGISTRY, default_threads, evaluate, get_convention, prepare  # noqa: E402

VIFB = ROOT.parent / "shared" / "data" / "vif" / "VIFB"
TARGET_S = 2.0


def synthetic_triple(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    scene = 128 + 60 * np.sin(x / 23) * np.cos(y / 31) + 30 * np.sin((x + y) / 7)
    vis = np.stack([scene, scene * 0.9 + 12, scene * 0.7 + 30], axis=-1) + rng.normal(0, 6, (h, w, 3))
    ir = 255 - scene * 0.8 + rng.normal(0, 10, (h, w))
    fused = 0.5 * vis + 0.5 * ir[..., None]
    return tuple(np.clip(v, 0, 255).astype(np.uint8) for v in (fused, vis, ir))


def triple(h: int, w: int):
    if (h, w) == (480, 640) and (VIFB / "vi" / "labMan.jpg").exists():
        from pipeline.evaluation import read_image

        names = ("fused/CNN/labMan.jpg", "vi/labMan.jpg", "ir/labMan.jpg")
        return tuple(read_image(VIFB / n) for n in names), "VIFB labMan (CNN)"
    return synthetic_triple(h, w), "synthetic"


def time_metrics(images, preset: str, repeat: int) -> dict[str, float]:
    conv = get_convention(preset)
    times = {}
    for name, spec in sorted(REGISTRY.items(), key=lambda kv: kv[0].lower()):
        prepared = prepare(*images, conv, name)
        best = np.inf
        for _ in range(repeat):
            start = time.perf_counter()
            spec.fn(*prepared, conv)
            best = min(best, time.perf_counter() - start)
        times[name] = best
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="default: vifb and standard")
    parser.add_argument("--sizes", default="640x480,2048x2048", help="comma-separated WxH")
    parser.add_argument("--repeat", type=int, default=3, help="runs per metric (best kept) up to 1 Mpx; 1 above")
    parser.add_argument("--untuned-allocator", action="store_true",
                        help="leave glibc's allocator as it is (tcmoa eval tunes it: pipeline.runtime)")
    args = parser.parse_args(argv)
    if not args.untuned_allocator:
        from pipeline import runtime

        print(f"allocator tuned as tcmoa eval does it: {runtime.tune_allocator()}")
    presets = args.preset or ["vifb", "standard"]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]

    print(f"{len(REGISTRY)} metrics: {', '.join(sorted(REGISTRY, key=str.lower))}")
    for w, h in sizes:
        images, origin = triple(h, w)
        repeat = args.repeat if w * h <= 1_000_000 else 1
        for preset in presets:
            times = time_metrics(images, preset, repeat)
            print(f"\n{w}x{h} {origin}, preset {preset} (RGB fused image: "
                  f"{'per channel' if get_convention(preset).color == 'average' else 'luminance'}), "
                  f"best of {repeat}")
            for name, t in sorted(times.items(), key=lambda kv: -kv[1]):
                print(f"  {name:<12} {t * 1000:9.1f} ms")
            print(f"  sum over all {len(times)} metrics: {sum(times.values()):.3f} s")
            if (w, h) == (640, 480):
                # end to end, preparation and shared intermediates included; best of `repeat`
                for threads, label in ((1, "one thread"), (None, f"{default_threads()} threads (default)")):
                    end_to_end = np.inf
                    for _ in range(repeat):
                        start = time.perf_counter()
                        evaluate(*images, preset=preset, threads=threads)
                        end_to_end = min(end_to_end, time.perf_counter() - start)
                    print(f"  evaluate() with all metrics, {label}: {end_to_end:.3f} s; target < {TARGET_S:.0f} s: "
                          f"ratio {end_to_end / TARGET_S:.2f} ({'met' if end_to_end < TARGET_S else 'NOT met'})")


if __name__ == "__main__":
    main()
