"""Keep freed tensor memory inside the process instead of handing it back to the kernel (glibc).

Why: glibc serves every allocation above its mmap threshold (128 KiB at start, raised
dynamically up to 32 MiB) with a fresh `mmap` and returns it with `munmap`, and trims the top of
the heap once 2× that is free. A training step allocates and frees tensors of 0.8–26 MB (a
batch of 128 conv1 activations is 6.4 MB in bf16), so the pages came back zeroed from the kernel
on every step, and page faults took up to a quarter of a training step's wall time in some
processes. With the thresholds below the same loop shows none (BENCHMARKS.md § Part 11, second
round).

The cost: a process keeps its peak heap until it exits (a training process peaks at a few
hundred MB). The CLI applies this at start; `train()` applies it too, so Python API users get the
same speed. `CNNLAB_MALLOC=default` in the environment leaves the allocator alone. On 32-bit
glibc the 32 MiB threshold is refused, so nothing changes there and `describe()` says "default".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1            # mallopt parameter numbers from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024     # bytes: the largest glibc ≤ 2.34 accepts on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024   # bytes of free heap top kept before trimming

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are in effect.

    A no-op (False) on anything but Linux with glibc, or with CNNLAB_MALLOC=default.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("CNNLAB_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):        # musl and others: no mallopt, nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


def describe() -> str:
    """What this process's allocator does, for run.json's hardware record."""
    return "glibc, freed memory kept (cnnlab.allocator)" if _applied else "default"
