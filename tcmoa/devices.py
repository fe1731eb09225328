"""Device and precision: resolved here once, for inference and training alike.

`device: auto` means the GPU when torch sees one (the process's LOCAL_RANK GPU under
torch.distributed, the first visible one otherwise), the CPU otherwise. `precision: auto` means
bf16 where the device computes it natively (a CUDA GPU with bf16 support, a CPU with AVX512-BF16
or AMX), fp32 elsewhere. Both the engine's unit ids and a training run's config record the
resolved values, never 'auto'.
"""
from __future__ import annotations

import os
import pathlib
import torch

PRECISIONS = ("fp32", "bf16", "auto")


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def resolve_device(name: "str | torch.device") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: torch sees no CUDA GPU in this process")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for this device."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: plain fp32)."""
    return torch.bfloat16 if precision == "bf16" else None


def resolve_placement(device: str = "auto", precision: str = "auto"):
    """The `Placement` (device type, precision) that 'auto' values resolve to in this process."""
    from tcmoa.interface import Placement

    dev = resolve_device(device)
    return Placement(dev.type, resolve_precision(precision, dev))
