"""Model throughput: tiles per second, achieved FLOP rate against the matmul peak, bf16 accuracy.

    python bench/model_speed.py                      # tiny + base, 448 tiles, batch 1 and 8, fp32 and bf16
    python bench/model_speed.py --configs tiny --batches 1 --reps 3
    python bench/model_speed.py --gpu-large          # on a CUDA machine: large config, 640x512 pairs, bf16

Every figure of one run is measured in that run (this machine is shared and noisy): the matmul
peak of each dtype is measured right before each model timing, so each ratio compares figures
taken under the same load.
FLOPs are counted by torch.utils.flop_counter on one forward pass (matmuls, convolutions and
attention), so the fraction is "useful model FLOPs / measured matmul peak".
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from tcmoa.inference import TCMoAFuser, cpu_has_native_bf16, random_model
from tcmoa.model import normalize

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of a square matmul of this dtype."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def model_flops(model, size: tuple[int, int], device: torch.device) -> int:
    x = torch.zeros(1, 3, *size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x, x, "vif")
    return counter.get_total_flops()


def time_fuser(fuser: TCMoAFuser, a: np.ndarray, b: np.ndarray, reps: int) -> float:
    """Seconds per batch (after one warm-up batch)."""
    fuser.fuse_batch(a, b, "vif")
    sync(fuser.device)
    start = time.perf_counter()
    for _ in range(reps):
        fuser.fuse_batch(a, b, "vif")
    sync(fuser.device)
    return (time.perf_counter() - start) / reps


def sample_pair(batch: int, size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Natural-looking inputs (smooth fields plus texture), so bf16 errors are representative."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(2):
        phase = rng.uniform(0, 6, size=(batch, 1, 1, 3))
        base = 0.5 + 0.3 * np.sin(6 * xx[None, ..., None] + phase) * np.cos(4 * yy[None, ..., None] + phase)
        out.append(np.clip(base + 0.1 * rng.standard_normal((batch, h, w, 3)), 0, 1).astype(np.float32))
    return out[0], out[1]


def cpu_section(args) -> None:
    device = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}")
    size = (args.size, args.size)
    print(f"\n{'config':<6} {'batch':>5} {'prec':<5} {'tiles/s':>9} {'GFLOP/s':>9} {'peak':>7} {'of peak':>8} {'vs fp32':>8} {'max |bf16-fp32|':>16}")
    for config in args.configs:
        model = random_model(config)
        flops = model_flops(model, size, device)
        for batch in args.batches:
            a, b = sample_pair(batch, size)
            results = {}
            for prec in args.precisions:
                fuser = TCMoAFuser(model, precision=prec, batch_size=batch)
                peak = matmul_peak(DTYPES[prec], device, seconds=1.0)
                seconds = time_fuser(fuser, a, b, args.reps)
                results[prec] = (batch / seconds, fuser.fuse_batch(a, b, "vif").image, peak)
            for prec in args.precisions:
                tiles_per_s, image, peak = results[prec]
                rate = tiles_per_s * flops
                vs = tiles_per_s / results["fp32"][0] if "fp32" in results else float("nan")
                diff = ""
                if prec != "fp32" and "fp32" in results:
                    diff = f"{np.abs(image - results['fp32'][1]).max() * 255:8.3f} /255"
                print(f"{config:<6} {batch:>5} {prec:<5} {tiles_per_s:>9.3f} {rate / 1e9:>9.1f} {peak / 1e9:>7.1f} "
                      f"{rate / peak:>7.1%} {vs:>7.2f}x {diff:>16}")
        print(f"  ({config}: {flops / 1e9:.1f} GFLOP per {size[0]}x{size[1]} tile pair)")


def gpu_section(args) -> None:
    if not torch.cuda.is_available():
        print("no CUDA device: skipping the GPU section")
        return
    device = torch.device("cuda")
    print(f"GPU: {torch.cuda.get_device_name()}  bf16 matmul peak {matmul_peak(torch.bfloat16, device) / 1e12:.1f} TFLOP/s")
    model = random_model("large").to(device)
    for batch in (1, 8):
        a, b = sample_pair(batch, (512, 640))  # H x W: 640x512 images as in the paper's timing
        fuser = TCMoAFuser(model, device=device, precision="bf16", batch_size=batch)
        seconds = time_fuser(fuser, a, b, max(args.reps, 5))
        print(f"large bf16 640x512 batch {batch}: {batch / seconds:.2f} pairs/s (paper: 1.60 FPS)")
    fp32 = TCMoAFuser(model, device=device, precision="fp32", batch_size=1)
    bf16 = TCMoAFuser(model, device=device, precision="bf16", batch_size=1)
    a, b = sample_pair(1, (512, 640))
    print(f"large max |bf16 - fp32| fused: {np.abs(fp32.fuse_batch(a, b).image - bf16.fuse_batch(a, b).image).max() * 255:.3f} /255")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["tiny", "base"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--reps", type=int, default=1, help="timed batches after one warm-up batch")
    parser.add_argument("--gpu-large", action="store_true", help="also time the large config on CUDA")
    args = parser.parse_args()
    cpu_section(args)
    if args.gpu_large:
        gpu_section(args)


if __name__ == "__main__":
    main()
