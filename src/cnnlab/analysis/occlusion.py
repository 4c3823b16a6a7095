"""Question 2.4: occlusion maps and whether the probability drop falls on the digit's strokes."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DIGIT_MARGIN, PATCH_SIZES, STROKE_THRESHOLD
from ..errors import ConfigError
from ..model import Net
from ..train import autocast, resolve_precision
from ._shared import IMAGE_SIZE, AnalysisResult, as_image, device_of, evaluating, inference_copy, untrained_like

# ---------------------------------------------------------------------------------------------
# Occlusion (question 2.4)
# ---------------------------------------------------------------------------------------------

def positions(k: int, stride: int = 1, size: int = IMAGE_SIZE) -> int:
    """Patch positions along one axis: top-left corners 0, s, 2s, … with the patch inside the image."""
    return (size - k) // stride + 1


def _check_occlusion_args(patch_sizes, stride, fill, model) -> tuple[tuple[int, ...], float, str]:
    sizes = tuple(int(k) for k in patch_sizes)
    if not sizes:
        raise ConfigError("give at least one patch size (1..5)")
    bad = [k for k in sizes if not 1 <= k <= 5]
    if bad:
        raise ConfigError(f"patch size {bad[0]} is out of range: the assignment's occluder is a "
                          f"square of 1 to 5 pixels (use --patch 1..5)")
    if not isinstance(stride, (int, np.integer)) or not 1 <= stride <= 27:
        raise ConfigError(f"stride {stride!r} is out of range: expected an integer 1..27")
    if isinstance(fill, str):
        if fill != "mean":
            raise ConfigError(f"fill {fill!r} is not understood: give a pixel value (0 = black, "
                              f"0.5 = mid-grey, 1 = white) or 'mean'")
        return sizes, float(model.input_mean), "mean"
    fill = float(fill)
    if not math.isfinite(fill):
        raise ConfigError(f"fill {fill} must be a finite pixel value")
    return sizes, fill, f"{fill:g}"


def _occlusion_batch(image: torch.Tensor, k: int, stride: int, fill: float) -> torch.Tensor:
    """All occluded copies [P·P, 1, 28, 28] of `image` [28, 28], row-major over patch positions."""
    P = positions(k, stride)
    starts = torch.arange(P) * stride
    idx = torch.arange(IMAGE_SIZE)
    inside = (idx[None, :] >= starts[:, None]) & (idx[None, :] < starts[:, None] + k)   # [P, 28]
    mask = inside[:, None, :, None] & inside[None, :, None, :]                           # [P, P, 28, 28]
    batch = torch.where(mask, torch.tensor(fill, dtype=image.dtype), image)
    return batch.reshape(P * P, 1, IMAGE_SIZE, IMAGE_SIZE)


# Images per forward on a CPU. The conv1 activations of 128 copies (128 × 32 × 28 × 28 × 4 B =
# 13 MB in fp32, half in bf16) stay in the 2 MiB-per-core L2 + 32 MiB L3; 1024 copies (103 MB) did
# not: occlusion of one image took 0.32 s in forwards of 1024 and 0.111 s in forwards of 128, with
# bit-identical fp32 results (benchmarks/FINDINGS-p11.md § 4). A GPU wants large batches instead.
CPU_CHUNK = 128
GPU_CHUNK = 4096


def chunk_for(dev: torch.device) -> int:
    return CPU_CHUNK if dev.type == "cpu" else GPU_CHUNK


def forward_chunks(net: Net, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Logits of `net` for every row of `x` (on the CPU, any device for `net`), in float64 on the
    CPU, computed a cache-sized chunk at a time in `precision` ("fp32" or "bf16"; see
    `occlusion` for what bf16 changes). Call under `evaluating(net)`."""
    dev = device_of(net)
    step = chunk_for(dev)
    with autocast(dev, precision):
        return torch.cat([net(x[i:i + step].to(dev)).float().double().cpu() for i in range(0, len(x), step)]
                         or [torch.zeros(0, 10, dtype=torch.float64)])


def _class_probs(model: Net, x: torch.Tensor, targets: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Probability of targets[i] for x[i], in float64 (softmax of the logits in double precision,
    so drops of 1e-6 near p = 1 are still resolved; keep precision "fp32" for that: bf16 moves
    each probability by up to ~2e-3)."""
    if not len(x):
        return torch.zeros(0, dtype=torch.float64)
    probs = F.softmax(forward_chunks(model, x, precision), dim=1)
    return probs.gather(1, targets.reshape(-1, 1).cpu())[:, 0]


def drop_attribution(drop: np.ndarray, k: int, stride: int = 1, size: int = IMAGE_SIZE) -> np.ndarray:
    """Spread each position's probability drop evenly over the k×k pixels its patch covers; the
    sum over positions gives a [size, size] pixel map of where the drop comes from."""
    P = drop.shape[0]
    out = np.zeros((size, size))
    span = stride * (P - 1) + 1
    for dy in range(k):
        for dx in range(k):
            out[dy:dy + span:stride, dx:dx + span:stride] += drop / (k * k)
    return out


def stroke_mask(image, dilate: int = 0, threshold: float = STROKE_THRESHOLD) -> np.ndarray:
    """Boolean [28, 28]: pixels ≥ threshold, grown by `dilate` pixels in every direction."""
    m = torch.as_tensor(np.asarray(image) >= threshold, dtype=torch.float32)[None, None]
    if dilate:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    return m[0, 0].numpy() > 0


def stroke_share(prob: np.ndarray, base_prob: float, image: np.ndarray, k: int, stride: int = 1,
                 threshold: float = STROKE_THRESHOLD, dilate: int = 0) -> tuple[float, float]:
    """(share of the probability drop on stroke pixels, share expected if every position dropped
    it equally). Only drops count (rises are set to 0); NaN when nothing drops. With `dilate` > 0
    the region is the strokes grown by that many pixels (the digit and its immediate surround)."""
    region = stroke_mask(image, dilate, threshold)
    drop = np.clip(base_prob - prob, 0.0, None)
    a = drop_attribution(drop, k, stride)
    c = drop_attribution(np.ones_like(drop), k, stride)
    total = a.sum()
    share = float(a[region].sum() / total) if total > 0 else float("nan")
    return share, float(c[region].sum() / c.sum())


@dataclass
class OcclusionResult(AnalysisResult):
    stem = "occlusion"
    image: np.ndarray                # [28, 28] in [0, 1]
    target: int
    base_prob: float                 # probability of target without occlusion
    base_pred: int
    fill: float
    fill_spec: str                   # "0.5" or "mean"
    stride: int
    prob: dict[int, np.ndarray]      # patch size -> [positions, positions] probability of target
    pred: dict[int, np.ndarray]      # patch size -> predicted class at each position
    seconds: float
    label: int | None = None
    name: str = ""
    precision: str = "fp32"          # of the forwards: "fp32" or "bf16"

    def stroke_shares(self) -> dict[int, tuple[float, float]]:
        return {k: stroke_share(p, self.base_prob, self.image, k, self.stride) for k, p in self.prob.items()}

    def to_dict(self) -> dict:
        shares = self.stroke_shares()
        per = {}
        for k, p in self.prob.items():
            iy, ix = np.unravel_index(int(np.argmin(p)), p.shape)
            per[str(k)] = {"positions": list(p.shape), "min_prob": float(p.min()), "mean_prob": float(p.mean()),
                           "min_at_top_left_yx": [int(iy) * self.stride, int(ix) * self.stride],
                           "positions_where_prediction_changes": float((self.pred[k] != self.base_pred).mean()),
                           "drop_share_on_strokes": shares[k][0], "expected_share_if_even": shares[k][1]}
        return {"name": self.name, "label": self.label, "target": self.target, "base_prob": self.base_prob,
                "base_pred": self.base_pred, "fill": self.fill, "fill_spec": self.fill_spec,
                "stride": self.stride, "seconds": self.seconds, "precision": self.precision,
                "stroke_threshold": STROKE_THRESHOLD, "patch_sizes": per,
                "definitions": {"prob_k": "probability of the target class with a k×k patch whose "
                                          "top-left corner is at (row·stride, column·stride)",
                                "drop_share_on_strokes": "share of the total probability drop (each "
                                                         "position's drop spread over the pixels its "
                                                         "patch covers) that lands on stroke pixels"}}

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"prob_{k}": p.astype(np.float32) for k, p in self.prob.items()}
        arrays.update({f"pred_{k}": p.astype(np.int8) for k, p in self.pred.items()})
        return {"image": self.image.astype(np.float32), "target": np.int64(self.target),
                "fill": np.float32(self.fill), "stride": np.int64(self.stride),
                "base_prob": np.float64(self.base_prob),
                "patch_sizes": np.array(sorted(self.prob), dtype=np.int64), **arrays}

    def figure(self):
        return _plot_occlusion(self)


def occlusion(model: Net, image, target: int | None = None, patch_sizes: Sequence[int] = PATCH_SIZES,
              stride: int = 1, fill: float | str = 0.5, label: int | None = None, name: str = "",
              precision: str = "auto") -> OcclusionResult:
    """Probability of `target` (default: the class predicted for the clean image) as a square
    patch of value `fill` (pixel scale; "mean" = the training-pixel mean the model normalizes
    with, which is 0 after normalization) slides over every position, for each patch size.
    The clean image and all occluded copies go through the model in cache-sized chunks under
    inference_mode, in `precision`: "auto" (bf16 where the CPU or GPU has native bf16, else
    fp32), "bf16" or "fp32". bf16 is ×1.7 faster than fp32 here and moves a probability by
    ≤ 5e-3 at ≥ 99% of positions and ≤ 1e-2 anywhere (the largest moves where p ≈ 0.5; tested
    against fp32, with the same predicted class for the clean image); the clean image is computed in the same precision, so the drops compare like with like. Use "fp32"
    for exact maps (equal to a one-image-at-a-time loop)."""
    img = as_image(image)
    sizes, fill_value, fill_spec = _check_occlusion_args(patch_sizes, stride, fill, model)
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision {precision!r} is not understood: give auto, fp32 or bf16")
    t0 = time.perf_counter()
    net = inference_copy(model)
    dev = device_of(net)
    prec = resolve_precision(precision, dev)
    prec = prec if prec in ("fp32", "bf16") else "fp32"     # fp16 (old GPUs) is not offered here
    batches = [_occlusion_batch(img, k, stride, fill_value) for k in sizes]
    with evaluating(net):
        # row 0 is the clean image, so p(clean) is computed exactly like every p(occluded)
        probs = F.softmax(forward_chunks(net, torch.cat([img[None, None], *batches]), prec), dim=1)
    base, probs = probs[0], probs[1:]
    base_pred = int(base.argmax())
    if target is None:
        target = base_pred
    if not 0 <= int(target) < base.numel():
        raise ConfigError(f"target class {target} is out of range: expected 0..{base.numel() - 1}")
    target = int(target)
    prob, pred, at = {}, {}, 0
    for k, b in zip(sizes, batches):
        P = positions(k, stride)
        prob[k] = probs[at:at + len(b), target].numpy().reshape(P, P)
        pred[k] = probs[at:at + len(b)].argmax(1).numpy().reshape(P, P)
        at += len(b)
    return OcclusionResult(img.numpy(), target, float(base[target]), base_pred, fill_value, fill_spec,
                           int(stride), prob, pred, time.perf_counter() - t0, label, name, prec)


def _plot_occlusion(res: OcclusionResult):
    """Row 1: p(target) on the fixed 0–1 scale (the assignment's plot). Row 2: the drop
    p(clean) − p(occluded) on its own scale, so that where the network looks stays visible even
    when it is so confident that row 1 is flat."""
    import matplotlib.pyplot as plt
    sizes = sorted(res.prob)
    n = len(sizes)
    fig, axes = plt.subplots(2, n + 1, figsize=(2.7 * (n + 1) + 0.9, 6.4), squeeze=False,
                             gridspec_kw={"hspace": 0.42, "wspace": 0.12})
    ax = axes[0, 0]
    ax.imshow(res.image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    truth = f"true {res.label} · " if res.label is not None else ""
    ax.set_title(f"{res.name}\n{truth}p({res.target}) = {res.base_prob:.4f}", fontsize=9)
    ax.set(xlabel="x (pixel)", ylabel="y (pixel)")
    axes[1, 0].axis("off")
    shares = res.stroke_shares()
    stroke = (res.image >= STROKE_THRESHOLD).astype(float)
    drops = {k: np.clip(res.base_prob - res.prob[k], 0, None) for k in sizes}
    dmax = max(float(d.max()) for d in drops.values()) or 1e-12
    fill = "training-mean" if res.fill_spec == "mean" else f"{res.fill:g}-valued"
    axes[1, 0].text(0.0, 0.5, f"fill: {fill} patch\nstride {res.stride}\nlargest drop\n{dmax:.3g}\n\n"
                    "bottom row: drop\np(clean) − p(occluded),\none scale for all sizes\n\n"
                    "blue outline:\ndigit strokes (≥ 0.5)",
                    transform=axes[1, 0].transAxes, va="center", fontsize=8.5)
    ims: list = [None, None]
    for j, k in enumerate(sizes, start=1):
        p = res.prob[k]
        P = p.shape[0]
        # each value is drawn at the centre of its patch, so the maps line up with the image
        c0, c1 = (k - 1) / 2, (P - 1) * res.stride + (k - 1) / 2
        h = res.stride / 2
        extent = (c0 - h, c1 + h, c1 + h, c0 - h)
        for row, (data, kw) in enumerate(((p, dict(cmap="magma", vmin=0, vmax=1)),
                                          (drops[k], dict(cmap="viridis", vmin=0, vmax=dmax)))):
            ax = axes[row, j]
            ims[row] = ax.imshow(data, extent=extent, interpolation="nearest", **kw)
            ax.contour(np.arange(IMAGE_SIZE), np.arange(IMAGE_SIZE), stroke, levels=[0.5],
                       colors="#33ccff", linewidths=0.7)
            ax.set_xlim(-0.5, IMAGE_SIZE - 0.5)
            ax.set_ylim(IMAGE_SIZE - 0.5, -0.5)
            ax.tick_params(labelsize=7)
            if j > 1:
                ax.set_yticklabels([])
        iy, ix = np.unravel_index(int(np.argmin(p)), p.shape)
        axes[0, j].set_title(f"{k}×{k} patch: min p = {p.min():.3f}\nat centre "
                             f"({ix * res.stride + c0:g}, {iy * res.stride + c0:g})", fontsize=9)
        s, e = shares[k]
        axes[1, j].set_title(f"drop, {k}×{k}: {s:.0%} on strokes\n(even spread: {e:.0%})", fontsize=9)
        axes[1, j].set_xlabel("patch centre x", fontsize=8)
    fig.colorbar(ims[0], ax=list(axes[0, 1:]), fraction=0.02, pad=0.01, label=f"p(class {res.target})")
    fig.colorbar(ims[1], ax=list(axes[1, 1:]), fraction=0.02, pad=0.01, label="drop in p", format="%.2g")
    fig.suptitle(f"occlusion: probability of class {res.target} as a {fill} patch slides over the image",
                 fontsize=10)
    return fig


class MeaningfulnessResult(dict, AnalysisResult):
    """What `occlusion_meaningfulness` measured, as a JSON-ready dict, plus the protocol."""
    stem = "meaningfulness"

    def to_dict(self) -> dict:
        return dict(self)

    def figure(self):
        return meaningfulness_figure(self)


def occlusion_meaningfulness(model: Net, images, labels, n: int = 200, reference: Net | None = None,
                             patch_size: int = 3, stride: int = 1, fill: float | str = 0.5,
                             seed: int = 0, reference_seed: int = 0) -> MeaningfulnessResult:
    """Is the learning meaningful? Over `n` correctly classified images (a seeded random choice),
    the share of the drop in p(true class) that falls on the digit's stroke pixels, against the
    share expected if every patch position mattered equally, and the same for `reference` (default:
    the untrained network of `reference_seed`) on the same images. Returns means, spreads
    (std, quartiles, bootstrap 95% interval of the mean) and the per-image values."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n {n!r} must be an integer ≥ 1")
    sizes, fill_value, fill_spec = _check_occlusion_args((patch_size,), stride, fill, model)
    k = sizes[0]
    x = torch.as_tensor(images)
    x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    x = x.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).cpu()
    y = torch.as_tensor(labels).long().reshape(-1).cpu()
    if len(x) != len(y):
        raise ConfigError(f"{len(x)} images but {len(y)} labels")
    if reference is None:
        reference = untrained_like(model, reference_seed)
    t0 = time.perf_counter()
    with evaluating(model):
        pred = forward_chunks(model, x[:, None]).argmax(1)
    correct = torch.nonzero(pred == y)[:, 0]
    if len(correct) == 0:
        raise ConfigError("the model classifies none of the given images correctly")
    g = torch.Generator().manual_seed(seed)
    chosen = correct[torch.randperm(len(correct), generator=g)[:n]].sort().values
    P = positions(k, stride)
    regions = {"strokes": 0, "digit_region": DIGIT_MARGIN}

    def measure(net):
        out = {r: ([], []) for r in regions}
        base_probs, max_drops = [], []
        with evaluating(net):
            for start in range(0, len(chosen), 8):       # 8 images × P² copies per forward chunk
                idx = chosen[start:start + 8]
                imgs, tg = x[idx], y[idx]
                base = _class_probs(net, imgs[:, None], tg).numpy()
                occ = torch.cat([_occlusion_batch(im, k, stride, fill_value) for im in imgs])
                p = _class_probs(net, occ, tg.repeat_interleave(P * P)).numpy().reshape(len(idx), P, P)
                for j in range(len(idx)):
                    for r, dilate in regions.items():
                        s, e = stroke_share(p[j], base[j], imgs[j].numpy(), k, stride, dilate=dilate)
                        out[r][0].append(s)
                        out[r][1].append(e)
                    base_probs.append(base[j])
                    max_drops.append(float(max(base[j] - p[j].min(), 0.0)))
        return ({r: (np.array(v[0]), np.array(v[1])) for r, v in out.items()},
                np.array(base_probs), np.array(max_drops))

    trained = measure(inference_copy(model))
    untrained = measure(inference_copy(reference))
    rng = np.random.default_rng(seed)

    def spread(s, e):
        ok = ~np.isnan(s)
        s_, e_ = s[ok], e[ok]
        if not len(s_):
            return {"images": 0, "images_without_any_drop": int((~ok).sum())}
        boot = rng.choice(len(s_), size=(2000, len(s_)), replace=True)
        ratio = s_ / e_
        return {"images": int(ok.sum()), "images_without_any_drop": int((~ok).sum()),
                "share_mean": float(s_.mean()),
                "share_std": float(s_.std(ddof=1)) if len(s_) > 1 else 0.0,
                "share_ci95": np.quantile(s_[boot].mean(1), [0.025, 0.975]).tolist(),
                "share_quartiles": np.quantile(s_, [0.25, 0.5, 0.75]).tolist(),
                "expected_share_mean": float(e_.mean()),
                "enrichment_mean": float(ratio.mean()), "enrichment_median": float(np.median(ratio)),
                "fraction_of_images_above_expected": float((s_ > e_).mean())}

    def describe(res):
        shares, b, d = res
        return {**{r: spread(*shares[r]) for r in regions},
                "base_prob_mean": float(b.mean()), "max_drop_mean": float(d.mean()),
                "max_drop_median": float(np.median(d))}

    t, u = describe(trained), describe(untrained)
    ts, us, tr, ur = t["strokes"], u["strokes"], t["digit_region"], u["digit_region"]
    verdict = (f"{k}×{k} patch of {fill_spec}, {ts['images']} correctly classified test images: "
               f"{ts['share_mean']:.0%} ± {ts['share_std']:.0%} of the drop in p(true class) lands on "
               f"stroke pixels (even spread: {ts['expected_share_mean']:.0%}; untrained network: "
               f"{us['share_mean']:.0%}); {tr['share_mean']:.0%} ± {tr['share_std']:.0%} within "
               f"{DIGIT_MARGIN} px of the strokes (even: {tr['expected_share_mean']:.0%}, enrichment "
               f"{tr['enrichment_mean']:.2f}×; untrained {ur['share_mean']:.0%}, {ur['enrichment_mean']:.2f}×). "
               f"Largest drop per image, median: {t['max_drop_median']:.3g} trained vs "
               f"{u['max_drop_median']:.3g} untrained")
    per = {f"{who}_{r}_share": res[0][r][0].tolist() for who, res in (("trained", trained), ("untrained", untrained))
           for r in regions}
    per.update({f"expected_{r}_share": trained[0][r][1].tolist() for r in regions})
    per.update({"trained_max_drop": trained[2].tolist(), "untrained_max_drop": untrained[2].tolist()})
    return MeaningfulnessResult({"n_requested": int(n), "n_correct_available": int(len(correct)), "patch_size": k, "stride": stride,
            "fill": fill_value, "fill_spec": fill_spec, "stroke_threshold": STROKE_THRESHOLD,
            "digit_margin_px": DIGIT_MARGIN, "seed": seed, "reference_seed": reference_seed,
            "indices": chosen.tolist(), "trained": t, "untrained": u, "summary": verdict,
            "seconds": time.perf_counter() - t0, "per_image": per,
            "definitions": {"share": "share of the summed probability drop (each patch position's "
                                     "drop spread evenly over the pixels it covers; rises count 0) "
                                     "that lands in the region",
                            "strokes": f"pixels ≥ {STROKE_THRESHOLD}",
                            "digit_region": f"stroke pixels grown by {DIGIT_MARGIN} px: the digit and "
                                            "the background right around it, where a patch changes "
                                            "the digit's shape",
                            "expected_share": "the same share if every position dropped equally "
                                              "(the region's area, weighted by patch coverage)",
                            "enrichment": "share / expected_share, per image (1 = no preference)",
                            "share_ci95": "bootstrap 95% interval of the mean over images"}})


def meaningfulness_figure(result: dict):
    """Per image: the share of the drop in each region, trained vs untrained, against the share
    expected if every position mattered equally (dots above the diagonal prefer the region)."""
    import matplotlib.pyplot as plt
    per = result["per_image"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    titles = {"strokes": f"on stroke pixels (≥ {result['stroke_threshold']})",
              "digit_region": f"within {result['digit_margin_px']} px of the strokes"}
    for ax, r in zip(axes, ("strokes", "digit_region")):
        ex = np.array(per[f"expected_{r}_share"], dtype=float)
        for who, color, marker in (("untrained", "C7", "s"), ("trained", "C0", "o")):
            v = np.array(per[f"{who}_{r}_share"], dtype=float)
            st = result[who][r]
            ax.scatter(ex, v, s=12, color=color, marker=marker, alpha=0.7,
                       label=f"{who}: mean {st['share_mean']:.0%} ± {st['share_std']:.0%}, "
                             f"{st['enrichment_mean']:.2f}× expected")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label=f"even spread (mean {np.mean(ex):.0%})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="expected share if every position mattered equally",
               ylabel="measured share of the drop", title=f"share of the probability drop {titles[r]}")
        ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    t, u = result["trained"], result["untrained"]
    title = (f"is the learning meaningful? {t['strokes']['images']} correctly classified test images, "
             f"{result['patch_size']}×{result['patch_size']} patch of {result['fill_spec']}; one dot per image. "
             f"Median largest drop: trained {t['max_drop_median']:.3g}, untrained {u['max_drop_median']:.3g}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
