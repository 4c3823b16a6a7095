"""Training time to 99.0% test accuracy, mean over seeds: the pytorch/examples MNIST recipe
(Adadelta lr 1.0, StepLR γ 0.7 per epoch, batch 64, fp32) on the same network, against cnnlab's
`quick` preset. Seconds count training steps only (evaluation excluded for both). Both run in
one process with glibc keeping freed memory (cnnlab.allocator, applied at the start), which can
only make the reference faster and the ratio smaller.

    python benchmarks/time_to_accuracy.py [--seeds 5] [--ref-seeds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from common import load_split, machine
from train_speed import PlainNet


def reference(split, seed: int, target: float = 0.99, max_epochs: int = 8) -> dict:
    torch.manual_seed(seed)
    x = (split.train_x.float() / 255 - split.mean) / split.std
    xt = (split.test_x.float() / 255 - split.mean) / split.std
    model = PlainNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    train_s, accs = 0.0, []
    g = torch.Generator().manual_seed(seed)
    for epoch in range(1, max_epochs + 1):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        t0 = time.perf_counter()
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), split.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        train_s += time.perf_counter() - t0
        model.eval()
        with torch.inference_mode():
            acc = (model(xt).argmax(1) == split.test_y).float().mean().item()
        accs.append(acc)
        if acc >= target:
            return {"seed": seed, "seconds": train_s, "epochs": epoch, "test_acc": acc, "reached": True}
    return {"seed": seed, "seconds": train_s, "epochs": max_epochs, "test_acc": accs[-1], "reached": False}


def ours(split, seed: int, target: float = 0.99) -> dict:
    from cnnlab.config import preset
    from cnnlab.train import train
    res = train(preset("quick", seed=seed), split=split, progress=False, log=lambda s: None)
    acc = res.info["test"]["accuracy"]
    return {"seed": seed, "seconds": res.info["timing"]["train_time_s"], "epochs": res.config.epochs,
            "test_acc": acc, "reached": acc >= target}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ref-seeds", type=int, default=5)
    args = ap.parse_args(argv)
    from cnnlab.allocator import keep_freed_memory
    keep_freed_memory()        # for every run of both recipes, not only those after cnnlab's first
    split = load_split()
    ref_rows, our_rows = [], []
    for s in range(max(args.seeds, args.ref_seeds)):     # alternate, so both see the same machine load
        if s < args.ref_seeds:
            ref_rows.append(reference(split, s))
        if s < args.seeds:
            our_rows.append(ours(split, s))
    ref_mean = statistics.mean(r["seconds"] for r in ref_rows)
    our_mean = statistics.mean(r["seconds"] for r in our_rows)
    res = {"machine": machine(), "reference": ref_rows, "cnnlab": our_rows, "reference_mean_s": ref_mean,
           "cnnlab_mean_s": our_mean, "speedup": ref_mean / our_mean,
           "cnnlab_mean_test_acc": statistics.mean(r["test_acc"] for r in our_rows),
           "cnnlab_all_reached": all(r["reached"] for r in our_rows),
           "reference_all_reached": all(r["reached"] for r in ref_rows)}
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
