"""Question 2.4: the assignment's occlusion maps (p(class) as a patch slides over an image) and
numbers that describe them. Whether the learning is meaningful is decided elsewhere, by the
controlled experiment of analysis/meaningful.py: a map of one image cannot make that judgment."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PATCH_SIZES
from ..device import autocast, resolve_precision
from ..errors import ConfigError
from ..model import Net
from . import regions as rg
from ._shared import IMAGE_SIZE, AnalysisResult, as_image, chunk_for, device_of, evaluating, inference_copy
from .regions import occluded, patch_overlap

if TYPE_CHECKING:
    import numpy.typing as npt
    from matplotlib.figure import Figure

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


def forward_chunks(net: Net, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Logits of `net` for every row of `x` (on the CPU, any device for `net`), in float64 on the
    CPU, computed a cache-sized chunk at a time in `precision` ("fp32" or "bf16"; see
    `occlusion` for what bf16 changes). Call under `evaluating(net)`."""
    dev = device_of(net)
    step = chunk_for(dev)
    with autocast(dev, precision):
        return torch.cat([net(x[i:i + step].to(dev)).float().double().cpu() for i in range(0, len(x), step)]
                         or [torch.zeros(0, 10, dtype=torch.float64)])


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


def stroke_mask(image: npt.ArrayLike, dilate: int = 0) -> np.ndarray:
    """Boolean [28, 28]: the image's ink (analysis/regions.py: stroke pixels against the image's own
    background), grown by `dilate` pixels in every direction."""
    return rg.grow(rg.ink(np.asarray(image)), dilate)


def stroke_share(prob: np.ndarray, base_prob: float, image: np.ndarray, k: int, stride: int = 1,
                 dilate: int = 0) -> tuple[float, float]:
    """(share of the probability drop on stroke pixels, share expected if every position dropped
    it equally). Only drops count (rises are set to 0); NaN when nothing drops. With `dilate` > 0
    the region is the strokes grown by that many pixels (the digit and its immediate surround)."""
    region = stroke_mask(image, dilate)
    drop = np.clip(base_prob - prob, 0.0, None)
    a = drop_attribution(drop, k, stride)
    c = drop_attribution(np.ones_like(drop), k, stride)
    total = a.sum()
    share = float(a[region].sum() / total) if total > 0 else float("nan")
    return share, float(c[region].sum() / c.sum())


def describe_patch_map(p: np.ndarray, base_prob: float, ink: np.ndarray, region: np.ndarray, k: int,
                       stride: int = 1, marker: np.ndarray | None = None) -> dict:
    """Descriptive numbers of one occlusion map p [P, P] (p(class) with a k×k patch at each
    position; base_prob without a patch): where the lowest p falls (the patch there touches the
    marker, else "the digit" = `region`, else other ink, else only background; "none" when no
    position lowers p), how many positions *raise* p, and the mean drop base − p at positions with
    ink under the patch against positions where the patch lies on background only (there a grey
    patch only inserts ink). No verdict: these describe one image."""
    p = np.asarray(p, dtype=np.float64)
    drop = base_prob - p
    under = patch_overlap(ink, k, stride)
    on_digit = patch_overlap(region, k, stride)
    on_marker = patch_overlap(marker, k, stride) if marker is not None else np.zeros_like(under)
    iy, ix = np.unravel_index(int(np.argmin(p)), p.shape)
    where = ("none" if not drop.max() > 0 else "marker" if on_marker[iy, ix] else "digit" if on_digit[iy, ix]
             else "other ink" if under[iy, ix] else "background")
    bg = ~under
    return {"min_prob": float(p.min()), "min_at_top_left_yx": [int(iy) * stride, int(ix) * stride],
            "largest_drop": float(drop.max()), "lowest_p_falls_on": where,
            "positions": int(p.size), "positions_where_grey_raises_p": int((drop < 0).sum()),
            "positions_where_grey_lowers_p": int((drop > 0).sum()),
            "positions_with_ink_under_patch": int(under.sum()), "positions_on_background_only": int(bg.sum()),
            "background_positions_that_lower_p": int((drop[bg] > 0).sum()),
            "mean_drop_ink_under_patch": float(drop[under].mean()) if under.any() else float("nan"),
            "mean_drop_pure_ink_insertion": float(drop[bg].mean()) if bg.any() else float("nan")}


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
        """Per patch size: (share of the summed drop on stroke pixels, that share if every position
        dropped equally). Descriptive only (the explorer shows it); it decides nothing."""
        return {k: stroke_share(p, self.base_prob, self.image, k, self.stride) for k, p in self.prob.items()}

    def _ink_and_digit(self) -> tuple[np.ndarray, np.ndarray]:
        """Ink and "the digit" by analysis/regions.py; no digit (a blank or texture image): empty."""
        masks, _ = rg.find_digits(self.image)
        return rg.ink(self.image), masks[0]

    def descriptive(self) -> dict[int, dict]:
        """Per patch size, `describe_patch_map`: where the lowest p falls (on "the digit" of
        analysis/regions.py, other ink, background, or "none"), how many positions the
        patch raises p, and the mean drop with ink under the patch against pure ink insertion."""
        ink, region = self._ink_and_digit()
        return {k: describe_patch_map(p, self.base_prob, ink, region, k, self.stride) for k, p in self.prob.items()}

    def to_dict(self) -> dict:
        per = {}
        for k, d in self.descriptive().items():
            per[str(k)] = {"positions_yx": list(self.prob[k].shape), "mean_prob": float(self.prob[k].mean()),
                           "positions_where_prediction_changes": float((self.pred[k] != self.base_pred).mean()),
                           **d}
        return {"name": self.name, "label": self.label, "target": self.target, "base_prob": self.base_prob,
                "base_pred": self.base_pred, "fill": self.fill, "fill_spec": self.fill_spec,
                "stride": self.stride, "seconds": self.seconds, "precision": self.precision,
                "patch_sizes": per,
                "definitions": {"prob_k": "probability of the target class with a k×k patch whose "
                                          "top-left corner is at (row·stride, column·stride)",
                                "lowest_p_falls_on": "what the patch at the lowest p touches: 'digit' (the "
                                                     "main stroke against the image's own background, grown 1 px; "
                                                     "analysis/regions.py), else 'other ink' (other strokes), else "
                                                     "'background'; 'none' when no position lowers p",
                                "positions_where_grey_raises_p": "positions where p(target) is higher with the "
                                                                 "patch than without",
                                "mean_drop_ink_under_patch": "mean of p(clean) − p(occluded) over positions whose "
                                                             "patch covers ink",
                                "mean_drop_pure_ink_insertion": "the same over positions whose patch covers only "
                                                                "background (the patch adds ink there, removes none)"}}

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"prob_{k}": p.astype(np.float32) for k, p in self.prob.items()}
        arrays.update({f"pred_{k}": p.astype(np.int8) for k, p in self.pred.items()})
        return {"image": self.image.astype(np.float32), "target": np.int64(self.target),
                "fill": np.float32(self.fill), "stride": np.int64(self.stride),
                "base_prob": np.float64(self.base_prob),
                "patch_sizes": np.array(sorted(self.prob), dtype=np.int64), **arrays}

    def figure(self) -> Figure:
        return _plot_occlusion(self)


def occlusion(model: Net, image: npt.ArrayLike | torch.Tensor, target: int | None = None, patch_sizes: Sequence[int] = PATCH_SIZES,
              stride: int = 1, fill: float | str = 0.5, label: int | None = None, name: str = "",
              precision: str = "auto") -> OcclusionResult:
    """Probability of `target` (default: the class predicted for the clean image) as a square
    patch of value `fill` (pixel scale; "mean" = the training-pixel mean the model normalizes
    with, which is 0 after normalization) slides over every position, for each patch size.
    The clean image and all occluded copies go through the model in cache-sized chunks under
    inference_mode, in `precision`: "auto" (bf16 where the CPU or GPU has native bf16, else
    fp32), "bf16" or "fp32". bf16 is ×1.7 faster than fp32 here and moves a probability by
    ≤ 5e-3 at ≥ 99% of positions and ≤ 2e-2 anywhere (the largest moves where p ≈ 0.5: 7.1e-3
    and 1.2e-2 on two 1-epoch networks, 1.9e-3 on a quick-preset one; tested
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
    batches = [occluded(img, k, stride, fill_value) for k in sizes]
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
    """Top: the image and how to read the maps. Row 1: p(target) on the fixed 0–1 scale (the
    assignment's plot). Row 2: the drop p(clean) − p(occluded) on its own scale, so that where the
    network looks stays visible even when it is so confident that row 1 is flat. Designed 6.8 in
    wide: printed at full size, no text under 7 pt (the per-size numbers are in the report's table)."""
    import matplotlib.pyplot as plt

    from ..figures import FIG_WIDTH_IN, wrap_text
    sizes = sorted(res.prob)
    n = len(sizes)
    ncol = max(n, 3)                            # room beside the image for the note, even for one size
    fig = plt.figure(figsize=(FIG_WIDTH_IN, 1.9 + 1.75 * 2), layout="constrained")
    gs = fig.add_gridspec(3, ncol, height_ratios=[1.05, 1, 1])
    ax = fig.add_subplot(gs[0, 0])
    ax.imshow(res.image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    truth = f"true {res.label}\n" if res.label is not None else ""
    ax.set_title(f"{res.name}\n{truth}p({res.target}) = {res.base_prob:.4f}" if res.name else
                 f"{truth}p({res.target}) = {res.base_prob:.4f}", fontsize=8.5)
    ax.set_xticks([]), ax.set_yticks([])
    desc = res.descriptive()
    stroke = res._ink_and_digit()[1].astype(float)
    drops = {k: np.clip(res.base_prob - res.prob[k], 0, None) for k in sizes}
    dmax = max(float(d.max()) for d in drops.values()) or 1e-12
    fill = "training-mean" if res.fill_spec == "mean" else f"{res.fill:g}-valued"
    note = fig.add_subplot(gs[0, 1:])
    note.axis("off")
    note.text(0.0, 0.5, wrap_text(
        f"A {fill} square patch of k×k pixels (stride {res.stride}) replaces the image under it; each map "
        f"pixel is the patch's centre.\nMiddle row: p(class {res.target}) with the patch there (dark = the patch "
        f"lowers p).\nBottom row: the drop p(clean) − p(occluded), one scale for all sizes (largest drop "
        f"{dmax:.3g}); 'peak' = what the patch at the lowest p covers.\nBlue outline: the digit (the main "
        f"stroke against the image's own background, grown 1 px).", FIG_WIDTH_IN * (ncol - 1) / ncol - 0.2, 8), transform=note.transAxes,
        va="center", fontsize=8)
    axes = np.array([[fig.add_subplot(gs[row, j]) for j in range(n)] for row in (1, 2)])
    ims: list = [None, None]
    for j, k in enumerate(sizes):
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
            ax.set_xticks([0, 10, 20]), ax.set_yticks([0, 10, 20])
            ax.tick_params(labelsize=7.5)
            if j > 0:
                ax.set_yticklabels([])
            if row == 0:
                ax.set_xticklabels([])
        axes[0, j].set_title(f"{k}×{k} patch\nmin p {p.min():.3f}", fontsize=8)
        axes[1, j].set_title(f"drop, {k}×{k}\npeak: {desc[k]['lowest_p_falls_on']}", fontsize=8)
    axes[1, n // 2].set_xlabel("patch centre x (pixel)")
    axes[0, 0].set_ylabel("y (pixel)")
    axes[1, 0].set_ylabel("y (pixel)")
    fig.colorbar(ims[0], ax=list(axes[0]), fraction=0.03, pad=0.02, label=f"p(class {res.target})")
    cb = fig.colorbar(ims[1], ax=list(axes[1]), fraction=0.03, pad=0.02, label="drop in p", format="%.2g")
    cb.ax.locator_params(nbins=4)
    fig.suptitle(wrap_text(f"occlusion: probability of class {res.target} as a {fill} patch slides over the image",
                           fontsize=10), fontsize=10)
    return fig
