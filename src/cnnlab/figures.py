"""Figures shared by several commands (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

import matplotlib

if "ipykernel" not in sys.modules:   # notebooks keep their inline backend; everything else needs no display
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

if TYPE_CHECKING:
    import numpy.typing as npt
    from matplotlib.backend_bases import GraphicsContextBase
    from matplotlib.font_manager import FontProperties
    from torch import nn

    from .data import Split

plt.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight", "font.size": 9,
                     "axes.spines.top": False, "axes.spines.right": False})


# Figures are designed FIG_WIDTH_IN wide, so the report prints them at full size (PRINT_WIDTH_IN
# below, with room for savefig's padding), with no text under MIN_PRINT_PT: ticks and labels use
# font.size (9 pt), the smallest annotations 7 pt.
FIG_WIDTH_IN = 6.8


def wrap_text(text: str, width_in: float = FIG_WIDTH_IN, fontsize: float = 9.0) -> str:
    """`text` with each line broken at spaces to fit `width_in` inches at `fontsize` points
    (estimated: 0.6 em a character, DejaVu Sans's average for digits and lower case, and exactly
    DejaVu Sans Mono's)."""
    n = max(12, int(width_in * 72 / (0.6 * fontsize)))
    return "\n".join(textwrap.fill(line, n, break_long_words=False, break_on_hyphens=False) if line.strip() else ""
                     for line in text.split("\n"))


def plot_curves(metrics: list[dict], title: str = "") -> plt.Figure:
    """Training and validation loss, error, and validation accuracy against images seen."""
    # one row of three: short enough to sit under its answer on the first page of the report
    fig = plt.figure(figsize=(FIG_WIDTH_IN, 2.9), layout="constrained")
    axes = fig.subplots(1, 3)
    if not metrics:
        for ax in axes:
            ax.text(0.5, 0.5, "no logged points", ha="center", va="center", transform=ax.transAxes)
        return fig
    n_per_epoch = None
    epochs = [m for m in metrics if m["kind"] == "epoch"]
    if epochs and epochs[0]["epoch"] > 0:
        n_per_epoch = epochs[0]["images_seen"] / epochs[0]["epoch"]
    x = np.array([m["images_seen"] for m in metrics], dtype=float)
    x = x / n_per_epoch if n_per_epoch else x
    xlabel = "epoch" if n_per_epoch else "images seen"
    get = lambda k: np.array([m[k] for m in metrics], dtype=float)  # noqa: E731

    ax = axes[0]
    ax.plot(x, get("train_loss"), "o-", ms=3, label="training")
    ax.plot(x, get("val_loss"), "s-", ms=3, label="validation")
    ax.set(title="loss (cross-entropy)", xlabel=xlabel, ylabel="nats", yscale="log")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(x, 100 * get("train_error"), "o-", ms=3, label="training")
    ax.plot(x, 100 * get("val_error"), "s-", ms=3, label="validation")
    ax.set(title="classification error", xlabel=xlabel, ylabel="% wrong", yscale="log")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(x, 100 * get("val_acc"), "s-", ms=3, color="C2")
    best = int(np.argmax(get("val_acc")))
    ax.plot(x[best], 100 * get("val_acc")[best], "*", ms=10, color="C3", label=f"best {100 * get('val_acc')[best]:.2f}%")
    ax.set(title="validation accuracy", xlabel=xlabel, ylabel="%")
    lo = max(90.0, 100 * float(np.nanmin(get("val_acc"))) - 0.5)
    ax.set_ylim(lo, 100)
    ax.legend(loc="lower right", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(wrap_text(title, fontsize=10.8))
    return fig


def image_grid(images: Iterable[npt.ArrayLike], titles: Sequence[str] | None = None,
               colors: Sequence[str] | None = None, ncols: int = 8, size: float = 1.25, cmap: str = "gray",
               vmin: float | None = 0.0, vmax: float | None = 1.0, suptitle: str = "",
               fontsize: float = 8.0) -> plt.Figure:
    """Images in a grid of `ncols` columns, each `size` inches (less when the grid would be wider
    than FIG_WIDTH_IN: the report prints nothing wider), with `titles` at `fontsize` points
    (keep them short enough for a cell: about size·72 / (0.6·fontsize) characters a line)."""
    images = [np.asarray(im, dtype=float).reshape(28, 28) if np.asarray(im).size == 784 else np.asarray(im, dtype=float)
              for im in images]
    n = len(images)
    ncols = min(ncols, n) or 1
    nrows = math.ceil(n / ncols)
    size = min(size, FIG_WIDTH_IN / ncols)
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles is not None else 0
    title_in = lines * fontsize * 1.25 / 72 + 0.08
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + title_in)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=fontsize, color=(colors[i] if colors is not None else "black"))
    if suptitle:
        fig.suptitle(wrap_text(suptitle, ncols * size, 10.8))
    fig.tight_layout()
    return fig


@torch.inference_mode()
def plot_predictions(model: nn.Module, split: Split, n: int = 32, seed: int = 0) -> plt.Figure:
    """Randomly chosen test images with true and predicted labels; wrong ones in red."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split.test_x), generator=g)[:n]
    x = split.test_x[idx].float().div(255)
    device = next(model.parameters()).device
    probs = model.eval()(x.to(device)).float().softmax(1).cpu()
    conf, pred = probs.max(1)
    y = split.test_y[idx].cpu()
    names = split.class_names
    titles = [f"#{int(i)} true {names[int(t)]}\npred {names[int(p)]} ({c * 100:.0f}%)"
              for i, t, p, c in zip(idx, y, pred, conf)]
    colors = ["black" if int(p) == int(t) else "red" for p, t in zip(pred, y)]
    wrong = sum(c == "red" for c in colors)
    return image_grid(x.squeeze(1).numpy(), titles, colors, ncols=6, size=FIG_WIDTH_IN / 6,
                      suptitle=f"{n} random test images (seed {seed}): {n - wrong} right, {wrong} wrong (red)")


def plot_bn_comparison(plain: list[list[dict]], bn: list[list[dict]]) -> plt.Figure:
    """Validation accuracy against training seconds for every seed, plain vs batch-norm."""
    fig, axes = plt.subplots(1, 2, figsize=(FIG_WIDTH_IN, 3.4), layout="constrained")
    for runs, color, label in ((plain, "C0", "plain"), (bn, "C1", "batch-norm")):
        for i, metrics in enumerate(runs):
            t = [m["train_time_s"] for m in metrics]
            acc = [100 * m["val_acc"] for m in metrics]
            axes[0].plot(t, acc, "o-", ms=3, color=color, alpha=0.8, label=label if i == 0 else None)
            axes[1].plot([m["images_seen"] / 1e3 for m in metrics], [100 * m["val_error"] for m in metrics],
                         "o-", ms=3, color=color, alpha=0.8, label=label if i == 0 else None)
    # zoom on the last 80% of training, where the two differ; early points may fall below the axis
    late = [100 * m["val_acc"] for runs in (plain, bn) for r in runs for m in r[len(r) // 5:]]
    axes[0].set(xlabel="training time (s)", ylabel="validation accuracy (%)", ylim=(min(late) - 0.3, 100),
                title="accuracy against\nwall-clock training time")
    axes[1].set(xlabel="training images seen (thousands)", ylabel="validation error (%)", yscale="log",
                title="error against\nimages seen")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


# The report's figure column: A4 (210 mm) less two 12 mm margins is 186 mm = 7.32 in; 7.0 in keeps
# a margin for the figure's own padding. A figure wider than this is scaled down to fit, and so is
# its text.
PRINT_WIDTH_IN = 7.0
MIN_PRINT_PT = 7.0       # smallest text a reader can read on paper


def legibility(fig: plt.Figure, max_width_in: float = PRINT_WIDTH_IN) -> dict:
    """How `fig` reads when printed at most `max_width_in` wide: its width, the scale it is printed
    at, the smallest text in points at that scale, and the pairs of texts that overlap.

    Measured on what is drawn (the renderer's text calls), so hidden tick labels do not count."""
    from matplotlib.text import Text
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()       # type: ignore[attr-defined]
    drawn: list[tuple[str, float, Text | None]] = []
    original = renderer.draw_text

    def spy(gc: GraphicsContextBase, x: float, y: float, s: str, prop: FontProperties, angle: float,
            ismath: bool | Literal["TeX"] = False, mtext: Text | None = None) -> None:
        if str(s).strip():
            drawn.append((str(s), float(prop.get_size_in_points()), mtext))
        return original(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)

    renderer.draw_text = spy
    try:
        fig.draw(renderer)
    finally:
        del renderer.draw_text
    bbox = fig.get_tightbbox(renderer)
    width_in = float(bbox.width) + 0.2 if bbox is not None else float(fig.get_figwidth())   # savefig's 0.1 in pad
    scale = min(1.0, max_width_in / width_in)
    sizes = [size for _, size, _ in drawn]
    boxes = []
    for s, _, t in drawn:
        if t is not None:
            e = t.get_window_extent(renderer)
            boxes.append((s, e.x0 + 1, e.y0 + 1, e.x1 - 1, e.y1 - 1))     # touching is not overlapping
    overlaps = []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            w = min(a[3], b[3]) - max(a[1], b[1])
            h = min(a[4], b[4]) - max(a[2], b[2])
            if w > 0 and h > 0:
                overlaps.append((a[0], b[0]))
    smallest = min(sizes) if sizes else None
    return {"width_in": round(width_in, 3), "scale": round(scale, 4),
            "min_font_pt": round(smallest * scale, 2) if smallest is not None else None,
            "smallest_text": next((s for s, size, _ in drawn if size == smallest), None),
            "overlaps": overlaps}
