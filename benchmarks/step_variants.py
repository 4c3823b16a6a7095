"""Training-step variants side by side: the current cnnlab step against candidate changes.

Each variant builds a fresh Net, runs `--warmup` steps (compile time, if any, is counted in
`first_s`: the wall time of those warm-up steps), then times `--steps` steps on the real
uint8-in-memory MNIST split. Variants are measured alternately with the baseline (base, V, base,
V, ...) and reported as images/s, the per-pair ratio to the baseline, and % of the measured bf16
matmul peak (training counted as 3 x forward FLOPs).

    CNNLAB_TEST_DATA=/work/shared/datasets/mnist PYTHONPATH=src \
      python benchmarks/step_variants.py --variants fused,foreach --pairs 3 --steps 60

Variants (comma-separated; any may be combined with --batch / --threads):
  base           the step of cnnlab.train today: autocast bf16, channels_last, AdamW (for-loop),
                 OneCycleLR, label smoothing 0.1, loss.item() and the error count every step
  foreach        AdamW(foreach=True)
  fused          AdamW(fused=True)
  fused_nosync   fused, and the two .item() calls per step replaced by on-device accumulation
  nocl           fused, contiguous (NCHW) instead of channels_last
  fp32           fused, no autocast
  bf16w          fused on fp32 master weights, the model itself held in bf16 (no autocast re-cast)
  compile        fused + torch.compile(model) (default mode)
  compile_mat    fused + torch.compile(model, mode="max-autotune-no-cudagraphs")
  compile_step   fused + compiled model + torch.compile'd optimizer step
  NAME@tN        any of these with torch.set_num_threads(N) for that variant only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from common import TRAIN_FLOPS, load_split, machine, matmul_peak

VARIANTS = ("base", "foreach", "fused", "fused_nosync", "nocl", "fp32", "bf16w", "compile",
            "compile_mat", "compile_step")


def build(variant: str, split, batch: int, lr: float = 4e-3, total_steps: int = 400):
    """A step function for `variant` and the number of images it consumes per call."""
    from cnnlab.model import Net
    torch.manual_seed(0)
    model = Net(mean=split.mean, std=split.std)
    cl = variant != "nocl"
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = model.to(memory_format=fmt)
    use_autocast = variant not in ("fp32", "bf16w")
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    kw = {}
    if variant == "foreach":
        kw = {"foreach": True}
    elif variant != "base":
        kw = {"fused": True}
    master = None
    if variant == "bf16w":
        # fp32 master copies own the optimizer state; the model computes in bf16 throughout
        master = [p.detach().clone().float() for p in model.parameters()]
        model = model.to(torch.bfloat16)
        model.input_mean.data = model.input_mean.data.float()
        model.input_std.data = model.input_std.data.float()
        groups = [{"params": [m for m, p in zip(master, model.parameters()) if p.ndim > 1], "weight_decay": 5e-4},
                  {"params": [m for m, p in zip(master, model.parameters()) if p.ndim <= 1], "weight_decay": 0.0}]
    else:
        groups = [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, **kw)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.25,
                                                anneal_strategy="cos", div_factor=25.0, final_div_factor=1e3)
    fwd = model
    if variant in ("compile", "compile_step"):
        fwd = torch.compile(model)
    elif variant == "compile_mat":
        fwd = torch.compile(model, mode="max-autotune-no-cudagraphs")
    opt_step = opt.step
    if variant == "compile_step":
        opt_step = torch.compile(opt.step)
    n = len(split.train_x)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    acc = {"loss": torch.zeros(()), "err": torch.zeros((), dtype=torch.long), "i": 0}
    sync = variant != "fused_nosync"

    def step():
        i = acc["i"] % (n // batch)
        acc["i"] += 1
        idx = perm[i * batch:(i + 1) * batch]
        x = split.train_x[idx].float().div_(255.0)
        y = split.train_y[idx]
        x = x.contiguous(memory_format=fmt)
        if master is not None:
            x = x.to(torch.bfloat16)
        if use_autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = fwd(x)
        else:
            logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if master is not None:
            for m, p in zip(master, params):
                m.grad = p.grad.float()
        opt_step()
        sched.step()
        if master is not None:
            with torch.no_grad():
                torch._foreach_copy_(params, master)
        if sync:
            loss.item()
            (logits.argmax(1) != y).sum().item()
        else:
            acc["loss"] += loss.detach() * len(y)
            acc["err"] += (logits.argmax(1) != y).sum()

    return step


def run_variant(variant: str, split, batch: int, warmup: int, steps: int) -> dict:
    """`variant` may end in "@tN": run it with N intra-op threads (restored afterwards)."""
    n0 = torch.get_num_threads()
    if "@t" in variant:
        variant, nt = variant.split("@t")
        torch.set_num_threads(int(nt))
    try:
        return _run(variant, split, batch, warmup, steps)
    finally:
        torch.set_num_threads(n0)


def _run(variant: str, split, batch: int, warmup: int, steps: int) -> dict:
    step = build(variant, split, batch, total_steps=warmup + steps + 10)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"images_per_s": steps * batch / dt, "first_s": first, "steady_s": dt}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="foreach,fused")
    ap.add_argument("--baseline", default="base")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--base-batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--peak", action="store_true", help="also measure the fp32/bf16 matmul peak")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    split = load_split()
    out = {"machine": machine(), "batch": args.batch, "steps": args.steps, "rows": {}}
    peak16 = None
    if args.peak:
        out["matmul_peak_gflops_fp32"] = matmul_peak(torch.float32)
        out["matmul_peak_gflops_bf16"] = peak16 = matmul_peak(torch.bfloat16)
    for v in args.variants.split(","):
        base, var = [], []
        for _ in range(args.pairs):
            base.append(run_variant(args.baseline, split, args.base_batch, args.warmup, args.steps))
            var.append(run_variant(v, split, args.batch, args.warmup, args.steps))
        ratios = [b["images_per_s"] / a["images_per_s"] for a, b in zip(base, var)]
        row = {"base_img_s": [round(r["images_per_s"]) for r in base],
               "img_s": [round(r["images_per_s"]) for r in var],
               "first_s": [round(r["first_s"], 2) for r in var],
               "ratio_median": round(statistics.median(ratios), 3),
               "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)]}
        if peak16:
            row["pct_bf16_peak"] = round(100 * statistics.median(r["images_per_s"] for r in var) * TRAIN_FLOPS / 1e9 / peak16, 1)
        out["rows"][f"{v}@b{args.batch}"] = row
        print(f"{v}@b{args.batch} t{torch.get_num_threads()}: {json.dumps(row)}", flush=True)
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
