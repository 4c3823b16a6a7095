"""2.1, continued: how the kernels move epoch by epoch (filters_by_epoch.safetensors, written by
training)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ._shared import AnalysisResult, diverging_cmap, mosaic
from .filters import CLASS_THRESHOLD, cosine, layer_numbers

if TYPE_CHECKING:
    import os

    from matplotlib.figure import Figure

    from ..runs import Run

FILTERS_BY_EPOCH = "filters_by_epoch.safetensors"   # in a run directory; absent in older runs
HISTORY_LAYERS = ("conv1", "conv2")


def load_filters_by_epoch(run: Run | str | os.PathLike[str]) -> dict[str, np.ndarray] | None:
    """{"conv1.epoch0": [32, 1, 3, 3], ...} from a run directory (or `runs.Run`), or None for a
    run written before training kept them."""
    from pathlib import Path

    from ..model import read_safetensors
    path = Path(getattr(run, "path", run)) / FILTERS_BY_EPOCH  # type: ignore[arg-type]  # a Run gives its .path
    if not path.is_file():
        return None
    tensors, _ = read_safetensors(path)
    return {k: v.double().numpy() for k, v in tensors.items()}


def _by_epoch(snapshots) -> dict[str, np.ndarray]:
    """{layer: [E+1, out, in, 3, 3]} from {"conv1.epoch0": tensor or array, ...}; ConfigError
    unless each layer has epochs 0..E (the same E) of one shape."""
    out: dict[str, np.ndarray] = {}
    epochs: set[int] = set()
    for layer in HISTORY_LAYERS:
        found: dict[int, np.ndarray] = {}
        for k, v in snapshots.items():
            name, _, e = str(k).partition(".epoch")
            if name == layer and e.isdigit():
                found[int(e)] = np.asarray(v.detach().cpu().double() if hasattr(v, "detach") else v, dtype=np.float64)
        if not found:
            continue
        n = len(found)
        if sorted(found) != list(range(n)) or len({a.shape for a in found.values()}) != 1:
            raise ConfigError(f"{layer}'s snapshots must be epochs 0..{n - 1} of one shape; got epochs {sorted(found)[:8]}")
        if found[0].ndim != 4 or found[0].shape[-2:] != (3, 3):
            raise ConfigError(f"{layer}'s snapshots must be [out, in, 3, 3] kernels; got {list(found[0].shape)}")
        out[layer] = np.stack([found[e] for e in range(n)])
        epochs.add(n)
    if "conv1" not in out:
        raise ConfigError("no conv1 snapshots (keys conv1.epoch0, conv1.epoch1, ...)")
    if len(epochs) != 1:
        raise ConfigError("conv1 and conv2 have snapshots of different numbers of epochs")
    return out


@dataclass
class FilterHistoryResult(AnalysisResult):
    """Per epoch e = 0..E, for each layer: the mean over its filters of the cosine similarity to
    their initial values, ‖W_e − W_0‖/‖W_0‖, ‖W_e − W_(e−1)‖/‖W_0‖ and the edge/blob/line/mixed
    counts and energy shares of `kernel_stats` (the classification `filters` uses)."""
    stem = "filter_history"
    weights: dict[str, np.ndarray]        # layer -> [E+1, out, in, 3, 3]
    layers: dict[str, dict]               # layer -> per-epoch lists (see to_dict)

    @property
    def epochs(self) -> int:
        return len(self.weights["conv1"]) - 1

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "layers": self.layers,
                "definitions": {
                    "mean_cosine_to_init": "per epoch, the mean over the layer's output filters of the cosine "
                                           "similarity of the filter's weights to its weights at initialization "
                                           "(epoch 0); 1 = unchanged direction",
                    "min_cosine_to_init": "the smallest of those cosines",
                    "relative_change": "‖W_e − W_0‖ / ‖W_0‖ over the whole layer",
                    "epoch_change": "‖W_e − W_(e−1)‖ / ‖W_0‖: how far epoch e moved the layer (0 at epoch 0)",
                    "class_counts": f"edge/blob/line/mixed kernels by filters.kernel_stats (threshold {CLASS_THRESHOLD})",
                    "low_order_share": "mean share of kernel energy in the mean and gradient (filters.kernel_stats)",
                    "gradient_share": "mean share of kernel energy in the gradient (edge) part"}}

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"{layer}_by_epoch": w for layer, w in self.weights.items()}

    def figure(self) -> Figure:
        return _plot_history(self)


def filter_history(source: Run | str | os.PathLike[str] | dict[str, Any] | None) -> FilterHistoryResult | None:
    """How conv1 and conv2 moved during training, epoch by epoch. `source`: a run directory or
    `runs.Run` (its filters_by_epoch.safetensors; None when the run has none: trained before
    snapshots were kept), or the snapshots themselves ({"conv1.epoch0": tensor, ...}, e.g.
    `TrainResult.filters_by_epoch`)."""
    if source is None:
        return None
    if isinstance(source, dict):
        snapshots = source
    else:
        loaded = load_filters_by_epoch(source)
        if loaded is None:
            return None
        snapshots = loaded
    weights = _by_epoch(snapshots)
    layers = {}
    for layer, w in weights.items():
        w0 = w[0]
        norm0 = max(float(np.linalg.norm(w0)), 1e-30)
        cos = [cosine(we, w0) for we in w]
        nums = [layer_numbers(we) for we in w]
        layers[layer] = {
            "mean_cosine_to_init": [float(c.mean()) for c in cos],
            "min_cosine_to_init": [float(c.min()) for c in cos],
            "relative_change": [float(np.linalg.norm(we - w0)) / norm0 for we in w],
            "epoch_change": [0.0] + [float(np.linalg.norm(w[e] - w[e - 1])) / norm0 for e in range(1, len(w))],
            "class_counts": [d["class_counts"] for d in nums],
            "low_order_share": [d["low_order_share"] for d in nums],
            "gradient_share": [d["mean_share"]["gradient"] for d in nums]}
    return FilterHistoryResult(weights, layers)


def _kernel_panel(ax, w: np.ndarray, v: float, title: str):
    """conv1's 32 kernels [32, 1, 3, 3] as a 4×8 mosaic on a shared colour scale ±v."""
    im = ax.imshow(mosaic(w[:, 0], 8), cmap=diverging_cmap(), vmin=-v, vmax=v, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(title, fontsize=8)
    return im


def _plot_history(res: FilterHistoryResult):
    import matplotlib.pyplot as plt
    w1 = res.weights["conv1"]
    E = res.epochs
    shown = sorted({0, min(1, E), E})
    fig = plt.figure(figsize=(6.7, 5.4), layout="constrained")     # prints at full size (≤ 7 in)
    gs = fig.add_gridspec(2, 3, height_ratios=[1.0, 1.25])
    v = float(np.abs(w1[shown]).max())
    c1 = res.layers["conv1"]
    im = None
    for j, e in enumerate(shown):
        ax = fig.add_subplot(gs[0, j])
        what = "initial" if e == 0 else f"after epoch {e}"
        extra = "" if e == 0 else f"\ncosine to initial {c1['mean_cosine_to_init'][e]:.2f}"
        im = _kernel_panel(ax, w1[e], v, f"conv1 {what}{extra}")
    if im is not None:
        cb = fig.colorbar(im, ax=fig.axes[-1], fraction=0.05, pad=0.03)
        cb.ax.tick_params(labelsize=7)
        cb.set_label("weight", fontsize=7)
    x = np.arange(E + 1)
    colors = {"conv1": "C0", "conv2": "C1"}
    ax = fig.add_subplot(gs[1, 0])
    for layer, d in res.layers.items():
        ax.plot(x, d["mean_cosine_to_init"], "o-", ms=3, color=colors[layer], label=layer)
    lowest = min(min(d["mean_cosine_to_init"]) for d in res.layers.values())
    ax.set(xlabel="epoch", ylabel="mean cosine to initial", ylim=(min(0.8, lowest - 0.05), 1.01))
    ax.set_title("direction kept from init", fontsize=8)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(gs[1, 1])
    for layer, d in res.layers.items():
        ax.plot(x, d["relative_change"], "o-", ms=3, color=colors[layer], label=f"{layer} from init")
        ax.plot(x[1:], d["epoch_change"][1:], ":", color=colors[layer], label=f"{layer} per epoch")
    ax.set(xlabel="epoch", ylabel="‖ΔW‖ / ‖W₀‖")
    ax.set_title("how far the weights moved", fontsize=8)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(gs[1, 2])
    for cls, color in (("edge", "C0"), ("blob", "C1"), ("line", "C2"), ("mixed", "C7")):
        ax.plot(x, [cc[cls] for cc in c1["class_counts"]], "o-", ms=3, color=color, label=cls)
    ax.set(xlabel="epoch", ylabel="conv1 kernels", ylim=(0, 32))
    ax.set_title("conv1 kernels by kind", fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    for a in fig.axes[-3:]:
        a.tick_params(labelsize=7)
        a.xaxis.label.set_fontsize(8)
        a.yaxis.label.set_fontsize(8)
        a.grid(alpha=0.3)
        if E <= 20:
            a.set_xticks(x if E <= 10 else x[::2])
    fig.suptitle(f"conv1 and conv2 over {E} epoch{'s' if E != 1 else ''} of training "
                 f"(shared colour scale ±{v:.2f})", fontsize=9)
    return fig
