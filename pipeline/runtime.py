"""Process-level settings for a process that runs fusion work.

glibc returns every large freed block (above its mmap threshold, which adapts up to 32 MB) to the
kernel, so each model call page-faults its activations in afresh: on a 2-core CPU that cost 10-20%
of the tiny model's time inside the engine, between whose calls other large arrays come and go.
Raising the mmap and trim thresholds keeps freed memory in the heap for reuse. Peak memory is
unchanged (what was freed is reused, not added to); the process keeps its peak until it exits,
which a worker process does anyway. Set TCMOA_MALLOC_TUNING=0 to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from (and go back to) the heap
_TRIM_THRESHOLD = 4 << 30
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
