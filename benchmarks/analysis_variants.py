"""Faster occlusion and robustness, prototyped against today's code and measured side by side.

    CNNLAB_TEST_DATA=/work/shared/datasets/mnist PYTHONPATH=src \
      python benchmarks/analysis_variants.py occlusion --pairs 5
    ... analysis_variants.py robustness --pairs 1

Models: the trained runs /work/runs/quick-s0 (plain) and /work/runs/quick-bn-s0 (batch-norm) if
present (read only), else a network trained here for one epoch.

Occlusion (one test image, k = 1..5, stride 1, fill 0.5, 3390 occluded copies):
  today      cnnlab.analysis.occlusion.occlusion(precision="fp32") (since p11b: forwards of 128)
  fp32_one   fp32, channels_last, the copies built by one broadcast, ONE forward of all 3390
  bf16_one   the same under bf16 autocast (probabilities still from a float64 softmax of the
             float32-cast logits)
  bf16_1t    bf16_one with torch.set_num_threads(1)
  *_cN       the same in forwards of N images each (cache-sized chunks)
Tolerance reported: max |p_variant - p_today| over every map entry, and whether every map's
argmin position and every predicted class agree.

Robustness (the quick report's stage: 1000 test images, FGSM and PGD-10 at 7 ε, 2 networks):
  today      cnnlab.analysis.robustness.robustness(.., precision="fp32", chunk=1000): since p11b the
             product is the stacked prototype itself; chunk=1000 stands in for the old batches of 1000
  fast_fp32  per network: one channels_last copy, all 6 non-zero ε stacked into one batch of 6000
             (per-image ε as a [6000,1,1,1] tensor), the same seeded random start as today's pgd
             (seed 0 for the first 1000-image batch), one forward+input-backward per PGD step
  fast_bf16  fast_fp32 under bf16 autocast
  *_cN       the stacked batch in chunks of N images, each chunk through all its PGD steps
             (robustness_fast; earlier runs)
  stacked_*  the product (cnnlab.analysis.robustness.robustness, which took the measured
             prototype's body in p11b) at the named precision and chunk
Tolerance reported: max |accuracy difference| over (network, ε), in percentage points.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import load_split, machine

RUNS = Path("/work/runs")


def models(split):
    from cnnlab.model import load_weights
    out = {}
    for name, run in (("plain", "quick-s0"), ("batch-norm", "quick-bn-s0")):
        p = RUNS / run / "model.safetensors"
        out[name] = load_weights(p, batch_norm=(name == "batch-norm")).eval()
    return out


# ---------------------------------------------------------------------------------------------
# Occlusion
# ---------------------------------------------------------------------------------------------

SIZES = (1, 2, 3, 4, 5)


def occlusion_batch_all(img: torch.Tensor, fill: float = 0.5, sizes=SIZES) -> tuple[torch.Tensor, list[int]]:
    """Every occluded copy for every patch size, [sum P_k^2, 1, 28, 28], in one pass per size."""
    idx = torch.arange(28)
    parts, counts = [], []
    for k in sizes:
        P = 28 - k + 1
        starts = torch.arange(P)
        inside = (idx[None, :] >= starts[:, None]) & (idx[None, :] < starts[:, None] + k)
        mask = inside[:, None, :, None] & inside[None, :, None, :]
        parts.append(torch.where(mask, torch.tensor(fill), img).reshape(P * P, 1, 28, 28))
        counts.append(P)
    return torch.cat(parts), counts


def occlusion_fast(net, img: torch.Tensor, bf16: bool, target: int | None = None, chunk: int = 4096) -> dict:
    """net: an eval-mode channels_last model (made once by the caller, as _inference_copy does).
    `chunk`: images per forward (the conv1 activations of a chunk should stay in L2: 256 images
    x 32 x 28 x 28 x 2 bytes = 13 MB in bf16)."""
    with torch.inference_mode():
        x, counts = occlusion_batch_all(img)
        x = torch.cat([img[None, None], x]).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = torch.cat([net(x[i:i + chunk]).float() for i in range(0, len(x), chunk)])
        probs = F.softmax(logits.double(), dim=1)
    base = probs[0]
    t = int(base.argmax()) if target is None else target
    out, at = {}, 1
    for k, P in zip(SIZES, counts):
        out[k] = (probs[at:at + P * P, t].numpy().reshape(P, P), probs[at:at + P * P].argmax(1).numpy().reshape(P, P))
        at += P * P
    return out


def run_occlusion(pairs: int, split) -> dict:
    from functools import partial

    from cnnlab.analysis.occlusion import occlusion as product
    occlusion = partial(product, precision="fp32")         # "today": the exact product path
    net_user = models(split)["plain"]
    img = split.test_x[0, 0].float() / 255
    net = copy.deepcopy(net_user).eval().to(memory_format=torch.channels_last)
    ref = occlusion(net_user, img)
    variants = {"fp32_one": (False, 4096), "bf16_one": (True, 4096), "bf16_1t": (True, 4096),
                "fp32_c256": (False, 256), "bf16_c256": (True, 256), "bf16_c128": (True, 128),
                "bf16_c512": (True, 512), "bf16_c128_1t": (True, 128), "fp32_c128": (False, 128),
                "bf16_c64": (True, 64)}
    times = {"today": [], **{v: [] for v in variants}}
    results = {}
    n0 = torch.get_num_threads()
    for _ in range(pairs):
        t0 = time.perf_counter(); occlusion(net_user, img); times["today"].append(time.perf_counter() - t0)
        for v, (bf16, chunk) in variants.items():
            if v.endswith("_1t"):
                torch.set_num_threads(1)
            t0 = time.perf_counter()
            results[v] = occlusion_fast(net, img, bf16=bf16, chunk=chunk)
            times[v].append(time.perf_counter() - t0)
            torch.set_num_threads(n0)
    out = {"images": sum((28 - k + 1) ** 2 for k in SIZES), "rows": {}}
    for v, ts in times.items():
        row = {"median_s": round(statistics.median(ts), 4), "range_s": [round(min(ts), 4), round(max(ts), 4)],
               "speedup_vs_today": round(statistics.median(a / b for a, b in zip(times["today"], ts)), 2)}
        if v in results:
            dp = max(float(abs(results[v][k][0] - ref.prob[k]).max()) for k in SIZES)
            same_argmin = all(int(results[v][k][0].argmin()) == int(ref.prob[k].argmin()) for k in SIZES)
            same_pred = all((results[v][k][1] == ref.pred[k]).all() for k in SIZES)
            row.update(max_abs_dp=dp, same_argmin=same_argmin, same_pred=bool(same_pred))
        out["rows"][v] = row
        print("occlusion", v, json.dumps(row), flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Robustness
# ---------------------------------------------------------------------------------------------

EPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)


def robustness_fast(models_: dict, x: torch.Tensor, y: torch.Tensor, pgd_steps: int = 10,
                    bf16: bool = False, seed: int = 0, chunk: int = 6000) -> dict:
    """{"fgsm": {(name, eps): acc}, "pgd": {...}}: all ε of one attack stacked into one batch per
    network, processed in chunks of `chunk` stacked images (each chunk runs all its PGD steps
    while its activations are still in cache).

    Same attacks as cnnlab.attacks: FGSM x' = clip(x + ε sign ∇), PGD with α = 2.5ε/steps, seeded
    uniform start U(-ε, ε) drawn exactly as attacks.pgd draws it (generator seeded `seed`, one draw
    of x's shape per ε), projection onto the ε-ball and [0, 1] after every step.
    """
    eps_nz = [e for e in EPS if e > 0]
    n = len(x)
    E_all = torch.tensor(eps_nz).repeat_interleave(n).view(-1, 1, 1, 1)      # per-image ε
    X0_all = x.repeat(len(eps_nz), 1, 1, 1)
    Y_all = y.repeat(len(eps_nz))
    start = []
    for e in eps_nz:                                   # attacks.pgd: uniform_(-e, e) from seed
        g = torch.Generator().manual_seed(seed)
        start.append(torch.empty(x.shape).uniform_(-e, e, generator=g))
    noise_all = torch.cat(start)
    cl = torch.channels_last
    out = {"fgsm": {}, "pgd": {}}
    for name, m in models_.items():
        net = copy.deepcopy(m).eval().to(memory_format=cl)
        for p in net.parameters():
            p.requires_grad_(False)

        def grad(xa, Y, net=net):
            xa = xa.detach().contiguous(memory_format=cl).requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net(xa)
            loss = F.cross_entropy(logits.float(), Y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xa)
            return g

        def predict(xa, net=net):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return net(xa.contiguous(memory_format=cl)).argmax(1)

        clean = float((predict(x) == y).float().mean())
        ok_f, ok_p = [], []
        for i in range(0, len(X0_all), chunk):
            X0, Y, E = X0_all[i:i + chunk], Y_all[i:i + chunk], E_all[i:i + chunk]
            xf = (X0 + E * grad(X0, Y).sign()).clamp(0, 1)
            ok_f.append(predict(xf) == Y)
            alpha = 2.5 * E / pgd_steps
            xa = (X0 + noise_all[i:i + chunk]).clamp(0, 1)
            for _ in range(pgd_steps):
                xa = xa + alpha * grad(xa, Y).sign()
                xa = torch.min(torch.max(xa, X0 - E), X0 + E).clamp(0, 1).detach()
            ok_p.append(predict(xa) == Y)
        for key, ok in (("fgsm", ok_f), ("pgd", ok_p)):
            acc = torch.cat(ok).view(len(eps_nz), n).float().mean(1)
            out[key].update({(name, 0.0): clean, **{(name, e): float(a) for e, a in zip(eps_nz, acc)}})
    return out


def run_robustness(pairs: int, split, n: int = 1000, steps: int = 10) -> dict:
    from functools import partial

    from cnnlab.analysis.robustness import robustness as product
    robustness = partial(product, precision="fp32", chunk=1000)   # "today": the old batches of 1000, exact
    ms = models(split)
    x = split.test_x[:n].float() / 255
    y = split.test_y[:n]
    variants = {"stacked_bf16_c128": (True, 128), "stacked_fp32_c128": (False, 128), "stacked_bf16_c64": (True, 64)}
    times = {"today": [], **{v: [] for v in variants}}
    res = {}
    for _ in range(pairs):
        t0 = time.perf_counter()
        fg = robustness(ms, x, y, attack="fgsm")
        pg = robustness(ms, x, y, attack="pgd", steps=steps)
        times["today"].append(time.perf_counter() - t0)
        res["today"] = {"fgsm": {(r["model"], r["eps"]): r["accuracy"] for r in fg.table},
                        "pgd": {(r["model"], r["eps"]): r["accuracy"] for r in pg.table}}
        for v, (bf16, chunk) in variants.items():
            t0 = time.perf_counter()
            prec = "bf16" if bf16 else "fp32"
            fg = product(ms, x, y, attack="fgsm", precision=prec, chunk=chunk)
            pg = product(ms, x, y, attack="pgd", steps=steps, precision=prec, chunk=chunk)
            res[v] = {"fgsm": {(r["model"], r["eps"]): r["accuracy"] for r in fg.table},
                      "pgd": {(r["model"], r["eps"]): r["accuracy"] for r in pg.table}}
            times[v].append(time.perf_counter() - t0)
    out = {"n": n, "pgd_steps": steps, "rows": {}}
    for v, ts in times.items():
        row = {"median_s": round(statistics.median(ts), 2), "all_s": [round(t, 2) for t in ts],
               "speedup_vs_today": round(statistics.median(a / b for a, b in zip(times["today"], ts)), 2)}
        if v != "today":
            diffs = [abs(res[v][a][k] - res["today"][a][k]) * 100 for a in ("fgsm", "pgd") for k in res["today"][a]]
            row["max_abs_diff_pct_points"] = round(max(diffs), 2)
        out["rows"][v] = row
        print("robustness", v, json.dumps(row), flush=True)
    out["table"] = {v: {a: {f"{k[0]}@{k[1]}": round(acc * 100, 1) for k, acc in r[a].items()} for a in r}
                    for v, r in res.items()}
    return out


def run_evaluate(pairs: int, split) -> dict:
    """cnnlab.train.evaluate on the 10,000 validation images at several batch sizes (bf16 and
    fp32), alternated; the predictions must not depend on the batch size."""
    from cnnlab.train import evaluate
    net = models(split)["plain"]
    variants = [(p, b) for p in ("bf16", "fp32") for b in (500, 256, 128)]
    times = {v: [] for v in variants}
    preds = {}
    for _ in range(pairs):
        for p, b in variants:
            t0 = time.perf_counter()
            r = evaluate(net, split.val_x, split.val_y, precision=p, batch_size=b)
            times[(p, b)].append(time.perf_counter() - t0)
            preds[(p, b)] = r
    out = {"rows": {}}
    for (p, b), ts in times.items():
        ref = preds[(p, 500)]
        row = {"median_s": round(statistics.median(ts), 3), "range_s": [round(min(ts), 3), round(max(ts), 3)],
               "speedup_vs_b500": round(statistics.median(a / c for a, c in zip(times[(p, 500)], ts)), 2),
               "accuracy": preds[(p, b)].accuracy,
               "predictions_differ_from_b500": int((preds[(p, b)].predictions != ref.predictions).sum()),
               "loss_diff_vs_b500": abs(preds[(p, b)].loss - ref.loss)}
        out["rows"][f"{p}@b{b}"] = row
        print("evaluate", p, b, json.dumps(row), flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["occlusion", "robustness", "evaluate"])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    split = load_split()
    if args.what == "occlusion":
        out = run_occlusion(args.pairs, split)
    elif args.what == "evaluate":
        out = run_evaluate(args.pairs, split)
    else:
        out = run_robustness(args.pairs, split, args.n, args.steps)
    out["machine"] = machine()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
