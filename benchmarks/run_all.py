"""Runs every benchmark and prints the goal table; writes BENCHMARKS.md with the latest output.

    python benchmarks/run_all.py [--quick] [--report quick|full|none]

Every speed claim is a ratio measured side by side in this one run on this machine. Set
CNNLAB_TEST_DATA (or CNNLAB_DATA_DIR) to a folder with the MNIST files to skip the fetch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

import analysis_speed
import memory_and_e2e
import time_to_accuracy
import train_speed
from common import ROOT, machine

med = statistics.median


def fmt_range(xs, f="{:.2f}"):
    return f"{f.format(med(xs))} (range {f.format(min(xs))}–{f.format(max(xs))})"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats and seeds (a smoke run of the runner)")
    ap.add_argument("--report", default="quick", choices=["quick", "full", "none"])
    ap.add_argument("--accuracy-seeds", type=int, default=3, help="seeds for the best-preset accuracy row")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    pairs = 2 if args.quick else 3
    seeds = 2 if args.quick else 5

    print("train throughput …", file=sys.stderr)
    ts = train_speed.main(["--pairs", str(pairs)])
    print("time to 99% …", file=sys.stderr)
    tta = time_to_accuracy.main(["--seeds", str(seeds), "--ref-seeds", str(seeds)])
    print("best preset accuracy …", file=sys.stderr)
    best = best_preset_accuracy(1 if args.quick else args.accuracy_seeds)
    print("analyses …", file=sys.stderr)
    an = analysis_speed.main(["--pairs", str(pairs)])
    print("memory and end to end …", file=sys.stderr)
    me = memory_and_e2e.main(["--report", args.report])

    rows = []
    r = ts["ratios"]
    rows.append(("training throughput, images/s", f"plain loop {med(ts['plain_images_per_s']):.0f} img/s",
                 f"cnnlab {med(ts['cnnlab_images_per_s']):.0f} img/s, ×{fmt_range(r)}", "≥ 3.0×", med(r) >= 3.0))
    rows.append(("training time to 99.0% test acc", f"pytorch/examples recipe {tta['reference_mean_s']:.1f} s "
                 f"(mean of {len(tta['reference'])})",
                 f"cnnlab quick {tta['cnnlab_mean_s']:.1f} s (mean of {len(tta['cnnlab'])}), ×{tta['speedup']:.1f}; "
                 f"mean test acc {100 * tta['cnnlab_mean_test_acc']:.2f}%, all ≥ 99.0%: {tta['cnnlab_all_reached']}",
                 "≥ 4× and ≤ 8 s", tta["speedup"] >= 4 and tta["cnnlab_mean_s"] <= 8 and tta["cnnlab_all_reached"]))
    rows.append(("best preset accuracy (full)", "published ~99.2–99.4%",
                 f"{100 * best['mean']:.2f}% ± {100 * best['std']:.2f} over {best['n']} seeds "
                 f"({', '.join(f'{100 * a:.2f}' for a in best['accs'])}); {best['train_s']:.0f} s training each",
                 "≥ 99.5%", best["mean"] >= 0.995))
    o = an["occlusion"]
    rows.append(("occlusion, 1 image, k=1–5, stride 1", f"loop {med(o['reference_s']):.2f} s",
                 f"cnnlab {med(o['cnnlab_s']):.3f} s, ×{fmt_range(o['speedups'], '{:.0f}')}",
                 "≥ 20× and ≤ 0.25 s", med(o["speedups"]) >= 20 and med(o["cnnlab_s"]) <= 0.25))
    c = an["class_models"]
    rows.append(("class models, 10 × 200 steps", f"one class at a time {med(c['reference_s']):.2f} s",
                 f"cnnlab {med(c['cnnlab_s']):.2f} s, ×{fmt_range(c['speedups'], '{:.1f}')}",
                 "≥ 5× and ≤ 2 s", med(c["speedups"]) >= 5 and med(c["cnnlab_s"]) <= 2))
    rows.append(("PGD-40 over 10,000 test images", "—", f"{an['pgd40']['images_per_s']:.0f} images/s "
                 f"({an['pgd40']['seconds']:.1f} s; accuracy at ε=0.1: {100 * an['pgd40']['accuracy_under_attack_eps0.1']:.1f}%)",
                 "report", True))
    e = an["evaluate"]
    rows.append(("evaluate 10,000 test images", f"fp32 {med(e['fp32_s']):.2f} s", f"bf16 {med(e['bf16_s']):.2f} s",
                 "≤ 0.5 s", min(med(e["bf16_s"]), med(e["fp32_s"])) <= 0.5))
    if f"report_{args.report}" in me:
        lim = 180 if args.report == "quick" else 600
        s = me[f"report_{args.report}"]["wall_s"]
        rows.append((f"cnnlab report --preset {args.report}", "—", f"{s:.0f} s", f"≤ {lim // 60} min", s <= lim))
    rows.append(("peak memory of training (quick)", "—", f"{me['train_quick']['peak_rss_mb']:.0f} MB RSS",
                 "≤ 1.5 GB", me["train_quick"]["peak_rss_mb"] <= 1536))
    gf = (f"Training achieves {ts['train_gflops_cnnlab']:.0f} GFLOP/s (plain loop {ts['train_gflops_plain']:.0f}) against a "
          f"measured matrix-multiply peak of {ts['matmul_peak_gflops_fp32']:.0f} GFLOP/s fp32 and "
          f"{ts['matmul_peak_gflops_bf16']:.0f} GFLOP/s bf16 (training counted as 3 × {ts['fwd_flops_per_image'] / 1e6:.2f} "
          f"MFLOP forward per image).")

    m = machine()
    lines = ["# Benchmarks", "",
             f"Latest output of `python benchmarks/run_all.py{' --quick' if args.quick else ''} --report {args.report}` "
             f"({datetime.date.today()}, {time.perf_counter() - t_start:.0f} s in all).", "",
             f"Machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), bf16 on CPU: {m['bf16_cpu']}, "
             f"CUDA: {m['cuda']}; torch {m['torch']}, Python {m['python']}. Timings on this shared machine are noisy: "
             f"every speed claim is a ratio measured alternately in this run, median and range of {pairs} pairs.", "",
             "| what | reference (same run) | cnnlab | goal | met |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} | {'yes' if ok else '**no**'} |" for a, b, c, d, ok in rows]
    lines += ["", gf, "", TRIED, "", "<details><summary>raw results</summary>", "", "```json",
              json.dumps({"train_speed": ts, "time_to_accuracy": tta, "best_preset": best, "analysis": an,
                          "memory_e2e": me}, indent=1, default=str), "```", "</details>", ""]
    text = "\n".join(lines)
    print(text)
    (ROOT / "BENCHMARKS.md").write_text(text)


TRIED = """## Goals not met, by how much, and what was tried

- **Training throughput ≥ 3.0×**: between ×2.5 and ×3.6 in two full runs of this script on the same day
  (the plain loop itself moved between 3,400 and 4,500 images/s; cnnlab between 12,200 and 12,500). Done:
  bf16 autocast (oneDNN AVX-512-bf16/AMX), channels_last, max-pool before ReLU, in-memory uint8 data,
  batch 256. Not done: torch.compile (measured slower on this CPU before this project started).
- **Time to 99.0% ≥ 4× and ≤ 8 s**: ×3.7 in both runs, 7.7 s and 8.2 s of training. The reference is checked
  on the test set after every epoch and stopped at the first epoch ≥ 99.0% (2–3 epochs), which favours it;
  cnnlab's `quick` preset is a fixed 2-epoch schedule. Tried: batch 512 with a higher peak lr (slower per
  image here, 98.88%), label smoothing 0.1 (what makes 2 epochs reach 99.1–99.2%). Next to try: a
  1.5-epoch schedule or a larger first-phase lr.
- **Occlusion ≥ 20×**: ×3–4 (0.19–0.24 s, so the ≤ 0.25 s part is met). The one-forward-per-image loop is
  fast on this CPU (0.2 ms per 28×28 forward), so the batched version cannot be 20× faster at fp32; bf16
  inference would roughly halve our time but perturbs the probabilities at the 1e-3 level, which the
  occlusion tests compare exactly against a loop oracle.
- **Class models ≥ 5×**: ×3.1 (0.55 s; ≤ 2 s met). The reference computes weight gradients one class at a
  time; ours batches ten classes with input-only gradients and one thread for small batches.
"""


def best_preset_accuracy(n: int) -> dict:
    from cnnlab.config import preset
    from cnnlab.train import train
    from common import load_split
    split = load_split()
    accs, secs = [], []
    for seed in range(n):
        r = train(preset("full", seed=seed), split=split, progress=False, log=lambda s: None)
        accs.append(r.info["test"]["accuracy"])
        secs.append(r.info["timing"]["train_time_s"])
    return {"n": n, "accs": accs, "mean": statistics.mean(accs), "std": statistics.stdev(accs) if n > 1 else 0.0,
            "train_s": statistics.mean(secs)}


if __name__ == "__main__":
    main()
