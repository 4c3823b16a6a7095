"""Shared helpers for the benchmarks: data, machine facts, and side-by-side timing.

Timings on a shared 2-core machine are noisy, so every claim is a ratio of two things measured
alternately in the same process (A, B, A, B, ...), and the median of the per-pair ratios is
reported together with its range.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def data_dir() -> str | None:
    """Benchmarks may use the shared copy of MNIST (CNNLAB_TEST_DATA); the product never does."""
    return os.environ.get("CNNLAB_TEST_DATA") or os.environ.get("CNNLAB_DATA_DIR") or None


def load_split():
    from cnnlab.data import load_split
    return load_split("mnist", data_dir())


def machine() -> dict:
    from cnnlab.runs import _cpu_name
    from cnnlab.device import cpu_has_bf16
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "bf16_cpu": cpu_has_bf16(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def timeit(fn, repeat: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def side_by_side(ref, ours, pairs: int = 3) -> dict:
    """Alternate ref() and ours() `pairs` times; each returns a rate or time measurement dict."""
    rows = []
    for _ in range(pairs):
        rows.append((ref(), ours()))
    return rows


def median_range(xs):
    return statistics.median(xs), min(xs), max(xs)


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 1.5) -> float:
    """Measured matrix-multiply throughput (GFLOP/s) of this machine in `dtype`."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    dt = time.perf_counter() - t0
    return 2 * n ** 3 * reps / dt / 1e9


# Forward FLOPs per image of the exact network (multiply-adds × 2), from the layer shapes.
FWD_FLOPS = (28 * 28 * 32 * 9 * 2          # conv1
             + 14 * 14 * 32 * 32 * 9 * 2   # conv2
             + 1568 * 500 * 2              # fc1
             + 500 * 10 * 2)               # fc2
TRAIN_FLOPS = 3 * FWD_FLOPS                # forward + backward (input and weight gradients)
