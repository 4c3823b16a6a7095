"""2.1, continued: what each conv1 filter responds to in real images (its strongest patches)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ..model import Net
from ._shared import AnalysisResult, diverging_cmap, mosaic
from .filters import CLASS_LETTER, CLASS_THRESHOLD, NON_DC, NON_DC_CHANCE, direction_bin, kernel_stats

if TYPE_CHECKING:
    import numpy.typing as npt
    import torch
    from matplotlib.figure import Figure


def _non_dc(w: np.ndarray) -> dict:
    """kernel_stats of 3×3 kernels [..., 3, 3] with their mean removed: the shares of the non-DC
    energy (gradient, center_surround, line, higher), class (edge / blob / line when that part holds
    ≥ CLASS_THRESHOLD of it, else mixed) and gradient direction."""
    w = np.asarray(w, dtype=np.float64)
    st = kernel_stats(w - w.mean(axis=(-2, -1), keepdims=True))
    share = {g: st["share"][g] for g in NON_DC}
    cls = np.full(w.shape[:-2], "mixed", dtype=object)
    cls[share["center_surround"] >= CLASS_THRESHOLD] = "blob"
    cls[share["line"] >= CLASS_THRESHOLD] = "line"
    cls[share["gradient"] >= CLASS_THRESHOLD] = "edge"
    return {"share": share, "class": cls, "direction": st["gradient_direction_deg"]}


@dataclass
class ResponseResult(AnalysisResult):
    """For each conv1 filter: the mean of the `top` 3×3 input patches that drive its pre-ReLU
    response highest, in pixel units (0 = black, 1 = white), and how structured that patch is."""
    stem = "filter_responses"
    layer: str
    top: int
    n_images: int
    weights: np.ndarray                  # [32, 3, 3]
    patches: np.ndarray                  # [32, 3, 3] mean top patch, pixels
    filters: list[dict]
    summary: dict
    reference_weights: np.ndarray | None = None
    reference_patches: np.ndarray | None = None
    reference_summary: dict | None = None

    def to_dict(self) -> dict:
        return {"layer": self.layer, "top": self.top, "images": self.n_images,
                "definitions": {
                    "mean_patch": "mean of the `top` input patches (3×3, pixel units 0–1, padding = the "
                                  "normalization mean) at which the filter's response before the ReLU "
                                  "(after batch-norm, in eval mode, when the network has it) is highest, "
                                  "over all positions of the images",
                    "non_dc_share": "share of a 3×3 pattern's energy, its mean removed, in each part of "
                                    "filters.kernel_stats' basis (i.i.d. chance: gradient 0.25, "
                                    "center_surround 0.25, line 0.25, higher 0.25)",
                    "class": f"edge / blob / line when that part holds ≥ {CLASS_THRESHOLD} of the non-DC "
                             f"energy, else mixed",
                    "direction_deg": "direction in which the pattern gets brighter (0 = right, 90 = up)",
                    "alignment": "cosine between the filter's weights and its mean patch, both with their "
                                 "mean removed"},
                "chance_share": NON_DC_CHANCE, "summary": self.summary,
                "untrained_summary": self.reference_summary, "filters": self.filters}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"weights": self.weights, "mean_patches": self.patches}
        if self.reference_patches is not None and self.reference_weights is not None:
            out.update(untrained_weights=self.reference_weights, untrained_mean_patches=self.reference_patches)
        return out

    def figure(self) -> Figure:
        return _plot_responses(self)


def _as_images(images):
    import torch
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).detach().cpu()
    x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28) or len(x) == 0:
        raise ConfigError(f"images must be [N, 28, 28] or [N, 1, 28, 28] with N ≥ 1; got {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise ConfigError("the images hold NaN or infinite pixels")
    return x


def _top_patches(model: Net, x, top: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean top-`top` patch per conv1 filter ([32, 3, 3], normalized input units) and the mean of
    those top responses ([32]); `x` [N, 1, 28, 28] pixels in [0, 1]."""
    import torch

    from ._shared import evaluating
    conv, bn = model.conv1, model.bn1
    n_f = conv.out_channels
    best_v = torch.full((n_f, 0), float("-inf"), dtype=torch.float64)
    best_i = torch.zeros((n_f, 0), dtype=torch.long)
    hw = x.shape[-2] * x.shape[-1]
    with evaluating(model):
        for s in range(0, len(x), chunk):
            xn = model.normalize(x[s:s + chunk].to(next(model.parameters()).device))
            z = conv(xn)
            z = bn(z) if bn is not None else z
            z = z.double().cpu().transpose(0, 1).reshape(n_f, -1)               # [32, n·784]
            k = min(top, z.shape[1])
            v, i = z.topk(k, dim=1)
            v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i + s * hw], 1)
            keep = v.topk(min(top, v.shape[1]), dim=1).indices
            best_v, best_i = v.gather(1, keep), i.gather(1, keep)
        mean, std = float(model.get_buffer("input_mean")), float(model.get_buffer("input_std"))
    xpad = torch.nn.functional.pad((x.double() - mean) / std, (1, 1, 1, 1))      # zeros: conv1's padding
    img, pos = best_i // hw, best_i % hw
    r, c = pos // x.shape[-1], pos % x.shape[-1]
    offs = torch.arange(3)
    rows = (r[..., None, None] + offs[:, None]).expand(*r.shape, 3, 3)
    cols = (c[..., None, None] + offs[None, :]).expand(*c.shape, 3, 3)
    patches = xpad[img[..., None, None].expand(*img.shape, 3, 3), 0, rows, cols]  # [32, top, 3, 3]
    return patches.mean(1).numpy(), best_v.mean(1).numpy()


def _response_numbers(w: np.ndarray, patch_norm: np.ndarray, patch_px: np.ndarray, act: np.ndarray) -> tuple[list[dict], dict]:
    pw, pp = _non_dc(w), _non_dc(patch_px)
    wc = (w - w.mean(axis=(1, 2), keepdims=True)).reshape(len(w), -1)
    pc = (patch_norm - patch_norm.mean(axis=(1, 2), keepdims=True)).reshape(len(w), -1)
    align = (wc * pc).sum(1) / np.maximum(np.linalg.norm(wc, axis=1) * np.linalg.norm(pc, axis=1), 1e-30)
    rows = []
    for i in range(len(w)):
        rows.append({"index": i, "weight_class": str(pw["class"][i]), "patch_class": str(pp["class"][i]),
                     "weight_non_dc_share": {g: round(float(pw["share"][g][i]), 4) for g in NON_DC},
                     "patch_non_dc_share": {g: round(float(pp["share"][g][i]), 4) for g in NON_DC},
                     "patch_direction_deg": round(float(pp["direction"][i]), 1),
                     "patch_direction": direction_bin(float(pp["direction"][i])),
                     "patch_contrast": round(float(patch_px[i].max() - patch_px[i].min()), 4),
                     "alignment": round(float(align[i]), 4), "mean_top_response": round(float(act[i]), 4)})
    count = lambda cls: {c: int((cls == c).sum()) for c in ("edge", "blob", "line", "mixed")}  # noqa: E731
    summary = {"filters": len(w),
               "weight_class_counts": count(pw["class"]), "patch_class_counts": count(pp["class"]),
               "mean_weight_gradient_share": float(pw["share"]["gradient"].mean()),
               "mean_patch_gradient_share": float(pp["share"]["gradient"].mean()),
               "edge_patch_not_edge_weights": int(((pp["class"] == "edge") & (pw["class"] != "edge")).sum()),
               "mean_alignment": float(align.mean()),
               "patch_edge_direction_bins_covered": len({direction_bin(float(d)) for d, c in
                                                         zip(pp["direction"], pp["class"]) if c == "edge"})}
    return rows, summary


def what_filters_respond_to(model: Net, images: npt.ArrayLike | torch.Tensor, layer: str = "conv1", top: int = 100,
                            reference: Net | None = None) -> ResponseResult:
    """For each conv1 filter, the mean of the `top` 3×3 input patches (over every position of
    `images`: [N, 28, 28] or [N, 1, 28, 28], uint8 or [0, 1]; a few thousand test images) where
    its response before the ReLU is highest, and how structured that mean patch is (its energy
    shares in kernel_stats' basis, mean removed). A filter whose weights look like noise can still
    be driven hardest by oriented strokes: nearby pixels of handwriting are strongly correlated.
    `reference` (e.g. `untrained_like(model, seed)`) gets the same numbers, as a control."""
    if layer != "conv1":
        raise ConfigError(f"what_filters_respond_to reads conv1 only (its inputs are pixels); got {layer!r}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"top must be an integer ≥ 1; got {top!r}")
    x = _as_images(images)
    top = min(top, len(x) * x.shape[-1] * x.shape[-2])

    def measure(net: Net) -> tuple[np.ndarray, np.ndarray, list[dict], dict]:
        w = net.conv1.weight.detach().cpu().double().numpy()[:, 0].copy()
        patch, act = _top_patches(net, x, top)
        mean, std = float(net.get_buffer("input_mean")), float(net.get_buffer("input_std"))
        px = patch * std + mean
        rows, summary = _response_numbers(w, patch, px, act)
        return w, px, rows, summary

    w, px, rows, summary = measure(model)
    res = ResponseResult(layer, top, len(x), w, px, rows, summary)
    if reference is not None:
        rw, rpx, _, rsum = measure(reference)
        res.reference_weights, res.reference_patches, res.reference_summary = rw, rpx, rsum
    return res


def _plot_responses(res: ResponseResult):
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(6.7, 5.6), layout="constrained")     # prints at full size (≤ 7 in)
    gs = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.0])
    v = float(np.abs(res.weights).max())
    for j, (tiles, title, kind) in enumerate([
            (res.weights, "conv1 weights (shared scale)", "weight"),
            (res.patches, f"mean of each filter's top {res.top:,} input patches", "patch")]):
        ax = fig.add_subplot(gs[0, j])
        if kind == "weight":
            im = ax.imshow(mosaic(tiles, 8, 1, 2), cmap=diverging_cmap(), vmin=-v, vmax=v, interpolation="nearest")
        else:
            im = ax.imshow(mosaic(tiles, 8, 1, 2), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for i, f in enumerate(res.filters):
            r, c = divmod(i, 8)
            cls = f["weight_class"] if kind == "weight" else f["patch_class"]
            label = CLASS_LETTER[cls] + (f["patch_direction"] if kind == "patch" and cls == "edge" else "")
            ax.text(c * 4 + 1, r * 5 + 3.1, label, ha="center", va="center", fontsize=7,
                    color="black" if cls != "mixed" else "#777777")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_title(title, fontsize=8)
        cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
        cb.ax.tick_params(labelsize=7)
        cb.set_label("weight" if kind == "weight" else "pixel (0 black, 1 white)", fontsize=7)
    ax = fig.add_subplot(gs[1, 0])
    wg = [f["weight_non_dc_share"]["gradient"] for f in res.filters]
    pg = [f["patch_non_dc_share"]["gradient"] for f in res.filters]
    ax.scatter(wg, pg, s=14, color="C0", label="trained", zorder=3)
    if res.reference_weights is not None and res.reference_patches is not None:
        rw, rp = _non_dc(res.reference_weights), _non_dc(res.reference_patches)
        ax.scatter(rw["share"]["gradient"], rp["share"]["gradient"], s=14, marker="s", color="C7",
                   label="untrained", zorder=2)
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
    ax.axhline(NON_DC_CHANCE["gradient"], color="C3", lw=0.8, ls=":", label="chance (0.25)")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="gradient share of the weights", ylabel="gradient share of mean patch")
    ax.set_title("edge structure: weights vs what excites them", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax = fig.add_subplot(gs[1, 1])
    classes = ("edge", "blob", "line", "mixed")
    bars: list[tuple[str, dict, str, str | None]] = [
        ("weights", res.summary["weight_class_counts"], "C0", None),
        ("top patches", res.summary["patch_class_counts"], "C2", None)]
    if res.reference_summary is not None:
        bars += [("untrained weights", res.reference_summary["weight_class_counts"], "C7", None),
                 ("untrained patches", res.reference_summary["patch_class_counts"], "none", "//")]
    width = 0.8 / len(bars)
    xs = np.arange(len(classes))
    for k, (name, counts, color, hatch) in enumerate(bars):
        ax.bar(xs + (k - (len(bars) - 1) / 2) * width, [counts[c] for c in classes], width, color=color,
               edgecolor="black" if hatch else None, hatch=hatch, label=name)
    ax.set_xticks(xs, classes)
    ax.set(ylabel="conv1 filters", ylim=(0, 40))
    ax.set_title("kind of pattern (mean removed)", fontsize=8)
    ax.legend(fontsize=7, ncol=2, loc="upper center")
    for a in fig.axes:
        if a.get_label() != "<colorbar>":
            a.tick_params(labelsize=7)
            a.xaxis.label.set_fontsize(8)
            a.yaxis.label.set_fontsize(8)
    fig.suptitle("What excites each conv1 filter: E edge (arrow: towards brighter), B blob, L line, · mixed",
                 fontsize=9)
    return fig
