"""cnnlab.fused's C kernels against torch's operators, side by side.

1. The whole training loop: cnnlab's train() (quick preset, batch 128) with `fused_kernels` on and
   off, each measurement in a fresh process (as train_speed.py), alternating on, off, on, off, ...
2. The two blocks alone, forward + backward at batch 128 under bf16 autocast, channels_last,
   alternating in one process with cnnlab.allocator's tuning (as in training): conv1 → max-pool → ReLU (torch: conv2d, max_pool2d, relu) and
   pool2 → ReLU → flatten.

    CNNLAB_TEST_DATA=/work/shared/datasets/mnist python benchmarks/fused_kernels.py [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import load_split, machine


def loop_rate(fused_kernels: bool, steps: int) -> float:
    """images/s of train()'s loop, measured in a new Python process."""
    import train_speed
    return train_speed.fresh("cnnlab", steps, *([] if fused_kernels else ["--no-fused-kernels"]))


def block_times(pairs: int, reps: int = 50) -> dict:
    """ms per forward + backward of each block, torch's operators against the kernel, alternating."""
    from cnnlab import fused
    from cnnlab.allocator import keep_freed_memory
    from cnnlab.model import Net
    keep_freed_memory()              # as train() does, for both sides: no page faults on fresh tensors
    net = Net().to(memory_format=torch.channels_last).train()     # as train() holds it
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(128, 1, 28, 28, generator=g) > 0.8).float().contiguous(memory_format=torch.channels_last)
    x = net.normalize(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        y = net.conv2(fused.conv1_pool_relu(x, net.conv1.weight, net.conv1.bias))   # conv2's real output
    y.requires_grad_()
    g1 = torch.randn(128, 32, 14, 14, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
    g2 = torch.randn(128, 32 * 49, generator=g).bfloat16()

    def conv1_torch():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net._block(x, net.conv1, None, net.relu1, net.pool1)
        out.backward(g1)

    def conv1_kernel():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fused.conv1_pool_relu(x, net.conv1.weight, net.conv1.bias)
        out.backward(g1)

    def pool2_torch():
        net.flatten(net._pool_relu(y, net.relu2, net.pool2)).backward(g2)

    def pool2_kernel():
        fused.pool2_relu_flatten(y).backward(g2)

    def ms(fn):
        for _ in range(5):
            fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps * 1e3
    out = {}
    for name, ref, ours in (("conv1", conv1_torch, conv1_kernel), ("pool2", pool2_torch, pool2_kernel)):
        rows = [(ms(ref), ms(ours)) for _ in range(pairs)]
        out[name] = {"torch_ms": [r for r, _ in rows], "kernel_ms": [k for _, k in rows],
                     "ratio_median": statistics.median(r / k for r, k in rows)}
    out["kernels"] = fused.describe()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=120)
    args = ap.parse_args(argv)
    load_split()                     # fetch/verify once, before any timing
    on, off = [], []
    for _ in range(args.pairs):
        on.append(loop_rate(True, args.steps))
        off.append(loop_rate(False, args.steps))
    ratios = [a / b for a, b in zip(on, off)]
    res = {"machine": machine(), "loop_images_per_s_fused": on, "loop_images_per_s_torch_ops": off,
           "loop_ratio_median": statistics.median(ratios), "loop_ratios": ratios,
           "blocks": block_times(args.pairs)}
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
