"""Training throughput: a plain PyTorch loop (fp32, NCHW, batch 128, Adam, ReLU then pool) against
cnnlab's loop (its quick preset: bf16 autocast where available, channels_last, pool before ReLU,
batch 128, AdamW one-cycle, glibc's allocator told to keep freed memory), measured alternately.

Each measurement runs in a fresh Python process (`--one plain|cnnlab`): cnnlab tunes glibc's
allocator for its own process (cnnlab.allocator), and a plain loop measured after it in the same
process would get that tuning too and no longer be the plain loop.

    python benchmarks/train_speed.py [--pairs 3] [--steps 120]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from common import FWD_FLOPS, TRAIN_FLOPS, load_split, machine, matmul_peak, median_range
from torch import nn


class PlainNet(nn.Module):
    """The assignment's network as a plain PyTorch user writes it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1, 1)
        self.conv2 = nn.Conv2d(32, 32, 3, 1, 1)
        self.fc1 = nn.Linear(32 * 7 * 7, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def plain_loop(x_all, y_all, steps: int, batch: int = 128) -> float:
    """images/s of the plain loop (data already normalized float32 in memory, as a fair baseline)."""
    torch.manual_seed(0)
    model = PlainNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    perm = torch.randperm(len(x_all))
    def step(i):
        idx = perm[(i * batch) % (len(x_all) - batch):][:batch]
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for i in range(5):
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * batch / (time.perf_counter() - t0)


def cnnlab_loop(split, steps: int, warmup: int = 5, **overrides) -> float:
    """images/s of cnnlab's own train() (its real loop, logging off) over `steps` × 256 images
    (2 × `steps` steps of the quick preset's batch 128), skipping the first `warmup` steps as
    the plain loop does: timed from the train() callback of step `warmup` to that of the last
    step, so every step in between counts whole (data, forward, loss, backward, update, loop)."""
    from cnnlab.config import preset
    from cnnlab.train import train
    cfg = preset("quick", epochs=1, train_subset=steps * 256, log_every=10**9, **overrides)
    stamps: list[float] = []
    def stamp(state, loss):
        stamps.append(time.perf_counter())
    train(cfg, split=split, progress=False, log=lambda s: None, callback=stamp)
    return cfg.batch_size * (len(stamps) - 1 - warmup) / (stamps[-1] - stamps[warmup])


def one(which: str, steps: int, fused_kernels: bool = True) -> float:
    """images/s of one loop, measured in this process."""
    split = load_split()
    if which == "cnnlab":
        return cnnlab_loop(split, steps, fused_kernels=fused_kernels)
    x = (split.train_x.float() / 255 - split.mean) / split.std
    return plain_loop(x, split.train_y, steps)


def fresh(which: str, steps: int, *flags: str) -> float:
    """images/s of one loop, measured in a new Python process (`flags`: more of this script's)."""
    r = subprocess.run([sys.executable, __file__, "--one", which, "--steps", str(steps), *flags],
                       capture_output=True, text=True, env=os.environ.copy())
    if r.returncode != 0:
        raise SystemExit(f"train_speed --one {which} failed: {r.stderr[-2000:]}")
    return float(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--one", choices=("plain", "cnnlab"), help="measure one loop here and print images/s")
    ap.add_argument("--no-fused-kernels", action="store_true", help="with --one cnnlab: torch's operators only")
    args = ap.parse_args(argv)
    if args.one:
        print(one(args.one, args.steps, fused_kernels=not args.no_fused_kernels))
        return {}
    ref, ours = [], []
    for _ in range(args.pairs):
        ref.append(fresh("plain", args.steps))
        ours.append(fresh("cnnlab", args.steps))
    ratios = [o / r for o, r in zip(ours, ref)]
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    med_ours = median_range(ours)[0]
    res = {"machine": machine(), "plain_images_per_s": ref, "cnnlab_images_per_s": ours, "ratios": ratios,
           "ratio_median": median_range(ratios), "train_gflops_cnnlab": med_ours * TRAIN_FLOPS / 1e9,
           "train_gflops_plain": median_range(ref)[0] * TRAIN_FLOPS / 1e9,
           "matmul_peak_gflops_fp32": peak32, "matmul_peak_gflops_bf16": peak16, "fwd_flops_per_image": FWD_FLOPS}
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
