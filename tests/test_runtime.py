"""The allocator settings of a fusion process (pipeline.runtime)."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_allocator_tuning_keeps_freed_model_sized_blocks_in_the_heap():
    """After tuning, freeing and re-allocating a 64 MB block page-faults (almost) nothing, where
    glibc's defaults hand the block back to the kernel and fault it in again on every use."""
    # malloc + touch + free through libc itself, as torch's CPU allocator does (numpy asks for huge
    # pages, which hides the effect)
    probe = (
        "import ctypes, ctypes.util, resource, sys\n"
        "from pipeline import runtime\n"
        "if sys.argv[1] == 'tuned': assert runtime.tune_allocator()\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
        "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "def use():\n"
        "    p = libc.malloc(64 << 20); ctypes.memset(p, 1, 64 << 20); libc.free(p)\n"
        "use()\n"  # first touch, either way
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(5):\n"
        "    use()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {}
    for mode in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True,
                             env={"PATH": "", "TCMOA_MALLOC_TUNING": "1"})
        faults[mode] = int(out.stdout.strip())
    assert faults["default"] > 5 * 10_000  # five times 16k pages of 4 KiB
    assert faults["tuned"] < 1_000
