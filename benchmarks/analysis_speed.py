"""Speed of the analyses, each against the obvious implementation, measured alternately:

- occlusion: one image, patch sizes 1–5, stride 1, every position — cnnlab's batched inference
  against a loop of one forward per occluded image;
- class models: 10 classes × 200 steps — cnnlab's batched input-only gradients against one class at
  a time with weight gradients on (what a straightforward `loss.backward()` loop does);
- PGD-40 over the 10,000 test images (images/s);
- evaluation of the 10,000 test images.

    python benchmarks/analysis_speed.py [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import load_split, machine


def trained_model(split):
    from cnnlab.config import preset
    from cnnlab.train import train
    return train(preset("quick", epochs=1), split=split, progress=False, log=lambda s: None).model.eval()


def occlusion_loop(model, image, sizes=(1, 2, 3, 4, 5), fill=0.5):
    """The reference: one forward per occluded image."""
    target = int(model(image[None, None]).argmax())
    maps = {}
    with torch.no_grad():
        for k in sizes:
            n = 28 - k + 1
            m = torch.empty(n, n)
            for i in range(n):
                for j in range(n):
                    x = image.clone()
                    x[i:i + k, j:j + k] = fill
                    m[i, j] = model(x[None, None]).softmax(1)[0, target]
            maps[k] = m
    return maps


def synth_loop(model, steps=200, step_size=100.0, sigma=32.0):
    """The reference: one class at a time, weights requiring grad, loss.backward()."""
    for p in model.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    out = []
    for t in range(10):
        x = (128 + sigma * torch.randn(1, 1, 28, 28, generator=g)).requires_grad_(True)
        for _ in range(steps):
            model.zero_grad()
            c = model(x / 255)[0, t]
            c.backward()
            with torch.no_grad():
                x += step_size * x.grad
            x.grad = None
        out.append(x.detach())
    return torch.cat(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args(argv)
    from cnnlab.analysis import class_models, occlusion, robustness
    from cnnlab.train import evaluate
    split = load_split()
    model = trained_model(split)
    image = split.test_x[0, 0].float() / 255
    res = {"machine": machine()}

    occ_ref, occ_ours = [], []
    for _ in range(args.pairs):
        t0 = time.perf_counter(); occlusion_loop(model, image); occ_ref.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); r = occlusion.occlusion(model, image); occ_ours.append(time.perf_counter() - t0)
    ref_maps = occlusion_loop(model, image, sizes=(3,))
    res["occlusion"] = {"reference_s": occ_ref, "cnnlab_s": occ_ours,
                        "speedups": [a / b for a, b in zip(occ_ref, occ_ours)],
                        "max_abs_diff_vs_reference_k3": float((ref_maps[3].double() - torch.as_tensor(r.prob[3])).abs().max())}

    syn_ref, syn_ours = [], []
    for _ in range(args.pairs):
        t0 = time.perf_counter(); synth_loop(model); syn_ref.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); class_models.synthesize(model, steps=200); syn_ours.append(time.perf_counter() - t0)
    res["class_models"] = {"reference_s": syn_ref, "cnnlab_s": syn_ours,
                           "speedups": [a / b for a, b in zip(syn_ref, syn_ours)]}

    x = split.test_x.float() / 255
    t0 = time.perf_counter()
    adv = robustness.pgd(model, x, split.test_y, eps=0.1, steps=40)
    dt = time.perf_counter() - t0
    with torch.inference_mode():
        acc = (model(adv).argmax(1) == split.test_y).float().mean().item()
    res["pgd40"] = {"seconds": dt, "images_per_s": len(x) / dt, "accuracy_under_attack_eps0.1": acc}

    ev = []
    for _ in range(args.pairs):
        t0 = time.perf_counter(); evaluate(model, split.test_x, split.test_y, precision="bf16"); ev.append(time.perf_counter() - t0)
    ev32 = []
    for _ in range(args.pairs):
        t0 = time.perf_counter(); evaluate(model, split.test_x, split.test_y, precision="fp32"); ev32.append(time.perf_counter() - t0)
    res["evaluate"] = {"bf16_s": ev, "fp32_s": ev32}
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
