"""Process-level settings for a process that runs fusion work.

glibc hands large freed blocks back to the kernel (blocks above its mmap threshold, and the top of
the heap beyond its trim threshold), so a model call can page-fault its activations in afresh.
Whether it does depends on what else the process allocates between calls: measured with
getrusage on 9 tiny-model calls of bench/engine_overhead.py, the calls inside the engine took
375k-460k minor page faults (0.7 s of system time) while the same calls back to back took ~0, and
ran 5-25% slower. Raising both thresholds keeps freed memory in the heap for reuse: the engine's
model calls then fault ~0 times and take as long as bare ones. What is freed is reused, not added
to, so peak memory stays where it was; the process keeps its peak until it exits, which a worker
does anyway. Set TCMOA_MALLOC_TUNING=0 to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from (and go back to) the heap
_TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes a C int: the largest it can hold (~2 GiB)
_tuned = False


def tune_allocator() -> bool:
    """Apply the allocator settings once per process (glibc on Linux only). True if applied."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("TCMOA_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _tuned
