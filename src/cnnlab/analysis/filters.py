"""Questions 2.1–2.2: the learned filters, decomposed into gradient / blob / line energy, vs init."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..model import Net
from ._shared import AnalysisResult, diverging_cmap, mosaic
from .verdict import Verdict

if TYPE_CHECKING:
    import numpy.typing as npt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

# ---------------------------------------------------------------------------------------------
# Filters (questions 2.1–2.2)
# ---------------------------------------------------------------------------------------------
# Every 3×3 kernel is written in an orthonormal basis of polynomials over the grid x, y ∈ {−1, 0, 1}
# (x to the right, y up), Gram–Schmidt in this order: 1 | x, y | x²+y² | x²−y², xy | x²y, xy² |
# x²y². Its energy (squared L2 norm) splits exactly into
#   dc               the mean: responds to brightness
#   gradient         first order: an edge detector; (c_x, c_y) gives its direction
#   center_surround  the rest of the part unchanged by 90° rotations and mirrors (x²+y², x²y²):
#                    centre vs ring, a blob / spot detector (a 4-neighbour Laplacian is 100% this)
#   line             oriented second order: a bar / line detector
#   higher           x²y, xy²: the rest (no simple reading)
# A random kernel with i.i.d. weights puts 1/9, 2/9, 2/9, 2/9 and 2/9 of its energy there on
# average, which is why every number is shown next to the untrained network of the same seed.

_GROUPS = ("dc", "gradient", "center_surround", "line", "higher")
GROUP_DIMS = {"dc": [0], "gradient": [1, 2], "center_surround": [3, 8], "line": [4, 5], "higher": [6, 7]}
CHANCE_SHARE = {g: len(d) / 9 for g, d in GROUP_DIMS.items()}
CLASS_THRESHOLD = 0.5   # a kernel is an edge/blob/line detector when that part holds ≥ half its energy
NON_DC = ("gradient", "center_surround", "line", "higher")
NON_DC_CHANCE = {g: len(GROUP_DIMS[g]) / 8 for g in NON_DC}   # i.i.d. kernel, mean removed
DIRECTIONS = ("→", "↗", "↑", "↖", "←", "↙", "↓", "↘")   # 8 compass bins of the gradient direction


def _basis3() -> np.ndarray:
    """[9, 9]: column j is the j-th orthonormal basis kernel (flattened row-major, row 0 on top)."""
    r, c = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    x, y = (c - 1).ravel().astype(float), (1 - r).ravel().astype(float)
    mono = np.stack([np.ones(9), x, y, x ** 2 + y ** 2, x ** 2 - y ** 2, x * y,
                     x ** 2 * y, x * y ** 2, x ** 2 * y ** 2], axis=1)
    q, rr = np.linalg.qr(mono)
    return q * np.sign(np.diag(rr))     # keep each basis vector pointing like its monomial


_B3 = _basis3()


def kernel_stats(w: npt.ArrayLike) -> dict:
    """Energy decomposition, class and gradient direction of every 3×3 kernel in `w` [..., 3, 3]."""
    w = np.asarray(w, dtype=np.float64)
    if w.shape[-2:] != (3, 3):
        raise ConfigError(f"kernel_stats needs 3×3 kernels; got shape {list(w.shape)}")
    coef = w.reshape(*w.shape[:-2], 9) @ _B3
    energy = coef ** 2
    tot = np.maximum(energy.sum(-1), 1e-30)
    share = {g: energy[..., d].sum(-1) / tot for g, d in GROUP_DIMS.items()}
    blob = share["dc"] + share["center_surround"]
    cls = np.full(w.shape[:-2], "mixed", dtype=object)
    cls[blob >= CLASS_THRESHOLD] = "blob"
    cls[share["line"] >= CLASS_THRESHOLD] = "line"
    cls[share["gradient"] >= CLASS_THRESHOLD] = "edge"
    # Round off float noise (~1e-16) first: arctan2(−1e-16, 1) would make a horizontal gradient 360°.
    direction = np.degrees(np.arctan2(np.round(coef[..., 2], 12), np.round(coef[..., 1], 12))) % 360.0
    return {"coef": coef, "energy": energy.sum(-1), "share": share, "blob_share": blob, "class": cls,
            "gradient_direction_deg": direction, "edge_orientation_deg": (direction + 90.0) % 180.0,
            "norm": np.sqrt(energy.sum(-1)), "mean": w.reshape(*w.shape[:-2], 9).mean(-1)}


def direction_bin(deg: float) -> str:
    return DIRECTIONS[int(((deg + 22.5) % 360) // 45)]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def layer_numbers(w: np.ndarray) -> dict:
    """Averages over all kernels of a layer: energy shares and class counts."""
    st = kernel_stats(w)
    flat_cls = st["class"].ravel()
    return {"kernels": int(flat_cls.size),
            "mean_share": {g: float(st["share"][g].mean()) for g in _GROUPS},
            "class_counts": {c: int((flat_cls == c).sum()) for c in ("edge", "blob", "line", "mixed")},
            "low_order_share": float((st["share"]["dc"] + st["share"]["gradient"]).mean()),
            "mean_norm": float(st["norm"].mean())}


@dataclass
class FilterResult(AnalysisResult):
    stem = "filters"
    layer: str
    weights: np.ndarray                  # [out, in, 3, 3]
    bias: np.ndarray
    reference: np.ndarray | None         # the same layer of the untrained network of the same seed
    kernels: list[dict]                  # conv1: one per kernel; conv2: one per output filter
    trained: dict                        # layer-level numbers
    untrained: dict | None
    chance_share: dict = field(default_factory=lambda: dict(CHANCE_SHARE))

    @property
    def untrained_numbers(self) -> dict:
        """The untrained network's layer numbers (measured only when `filters` got a reference)."""
        if self.untrained is None:
            raise ConfigError("these filters were measured without a reference network: pass "
                              "reference=untrained_like(model, seed) to filters()")
        return self.untrained

    def to_dict(self) -> dict:
        return {"layer": self.layer, "shape": list(self.weights.shape),
                "definitions": {
                    "share": "fraction of a kernel's energy (sum of squared weights) in each part of "
                             "an orthonormal polynomial basis on the 3×3 grid: dc (mean), gradient "
                             "(x, y: edges), center_surround (x²+y², x²y² beyond the mean: blobs), line "
                             "(x²−y², xy: bars), higher (x²y, xy²)",
                    "class": f"edge if gradient share ≥ {CLASS_THRESHOLD}, blob if dc + center_surround "
                             f"≥ {CLASS_THRESHOLD}, line if line share ≥ {CLASS_THRESHOLD}, else mixed",
                    "gradient_direction_deg": "direction in which the weights increase (0 = right, "
                                              "90 = up): the kernel responds to images getting "
                                              "brighter that way",
                    "edge_orientation_deg": "orientation of the edge it detects (0 = horizontal, 90 = vertical)",
                    "effective_inputs": "participation ratio (Σe)²/Σe² of the energies e of an output "
                                        "filter's kernels over its input channels (32 = uses all equally)",
                    "cosine_to_init": "cosine similarity of the trained kernel to the same kernel before training"},
                "chance_share": self.chance_share, "trained": self.trained, "untrained": self.untrained,
                "kernels": self.kernels}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"weights": self.weights, "bias": self.bias}
        if self.reference is not None:
            out["untrained"] = self.reference
        return out

    def figure(self) -> Figure:
        return _plot_conv1(self) if self.layer == "conv1" else _plot_conv2(self)


def filters(model: Net, layer: str = "conv1", reference: Net | None = None) -> FilterResult:
    """Kernels of `layer` ("conv1" or "conv2"), what kind of detector each is, and the same numbers
    for `reference` (use `untrained_for_run(run)`: the untrained network of the run's seed)."""
    if layer not in ("conv1", "conv2"):
        raise ConfigError(f"unknown layer {layer!r}: choose conv1 or conv2")
    conv = getattr(model, layer)
    w = conv.weight.detach().cpu().double().numpy().copy()
    b = conv.bias.detach().cpu().double().numpy().copy()
    ref = getattr(reference, layer).weight.detach().cpu().double().numpy().copy() if reference is not None else None
    st = kernel_stats(w)
    cos = cosine(w, ref) if ref is not None else None
    kernels = []
    if layer == "conv1":
        for i in range(w.shape[0]):
            k = {"index": i, "class": str(st["class"][i, 0]),
                 "share": {g: round(float(st["share"][g][i, 0]), 4) for g in _GROUPS},
                 "gradient_direction_deg": round(float(st["gradient_direction_deg"][i, 0]), 1),
                 "edge_orientation_deg": round(float(st["edge_orientation_deg"][i, 0]), 1),
                 "direction": direction_bin(float(st["gradient_direction_deg"][i, 0])),
                 "norm": round(float(st["norm"][i, 0]), 4), "mean": round(float(st["mean"][i, 0]), 4),
                 "bias": round(float(b[i]), 4)}
            if cos is not None:
                k["cosine_to_init"] = round(float(cos[i]), 4)
            kernels.append(k)
    else:
        e = st["energy"]                                      # [out, in]
        eff = e.sum(1) ** 2 / np.maximum((e ** 2).sum(1), 1e-30)
        ref_eff = None
        if ref is not None:
            re = kernel_stats(ref)["energy"]
            ref_eff = re.sum(1) ** 2 / np.maximum((re ** 2).sum(1), 1e-30)
        for o in range(w.shape[0]):
            wsh = {g: float((st["share"][g][o] * e[o]).sum() / max(e[o].sum(), 1e-30)) for g in _GROUPS}
            counts = {c: int((st["class"][o] == c).sum()) for c in ("edge", "blob", "line", "mixed")}
            top = np.argsort(-e[o])[:3]
            k = {"index": o, "energy_weighted_share": {g: round(v, 4) for g, v in wsh.items()},
                 "class_counts": counts, "effective_inputs": round(float(eff[o]), 2),
                 "top_inputs": [int(t) for t in top],
                 "top3_energy_share": round(float(e[o][top].sum() / max(e[o].sum(), 1e-30)), 4),
                 "norm": round(float(np.sqrt(e[o].sum())), 4), "bias": round(float(b[o]), 4)}
            if cos is not None and ref_eff is not None:
                k["cosine_to_init"] = round(float(cos[o]), 4)
                k["untrained_effective_inputs"] = round(float(ref_eff[o]), 2)
            kernels.append(k)

    def numbers(weights: np.ndarray, cosines: np.ndarray | None, effs: np.ndarray | None) -> dict[str, Any]:
        d = layer_numbers(weights)
        if layer == "conv1":
            edges = [k for k in kernel_stats(weights)["gradient_direction_deg"][kernel_stats(weights)["class"] == "edge"]]
            d["edge_directions"] = {s: sum(direction_bin(a) == s for a in edges) for s in DIRECTIONS}
            d["edge_direction_bins_covered"] = sum(v > 0 for v in d["edge_directions"].values())
        if effs is not None:
            d["mean_effective_inputs"] = float(np.mean(effs))
        if cosines is not None and ref is not None:
            d["mean_cosine_to_init"] = float(np.mean(cosines))
            d["relative_change_from_init"] = float(np.linalg.norm(w - ref) / np.linalg.norm(ref))
        return d

    trained = numbers(w, cos, eff if layer == "conv2" else None)
    untrained = None
    if ref is not None:
        untrained = numbers(ref, None, ref_eff if layer == "conv2" else None)
    return FilterResult(layer, w, b, ref, kernels, trained, untrained)


LOW_ORDER_MARGIN = 0.05   # trained low-order share must beat the untrained kernels' by ≥ 5 points
RESHAPED_COSINE = 0.8     # mean cosine to the initial kernels below this: training "reshaped" them

PATTERN_RULE = (
    f"'yes' (training made smooth edge/blob patterns) when the trained kernels' mean share of energy in the "
    f"low-order patterns (mean + gradient) exceeds the same kernels' share before training by at least "
    f"{100 * LOW_ORDER_MARGIN:.0f} percentage points and more kernels are edge or blob detectors than before "
    f"training; otherwise 'no'. A kernel is an edge (blob, line) detector when its gradient (mean + "
    f"centre-surround, oriented second-order) part holds at least {100 * CLASS_THRESHOLD:.0f}% of its energy. "
    f"Training 'reshaped' the kernels when their mean cosine similarity to their initial values is below "
    f"{RESHAPED_COSINE:g}.")


def patterns_verdict(res: FilterResult, compare: FilterResult | None = None) -> Verdict:
    """2.1 (conv1) / 2.2 (conv2): did training give the kernels edge/blob structure beyond their
    initialization? Needs `res` measured with a reference (the untrained network of the same
    seed); `compare` (conv1, for 2.2) adds its low-order share to the sentence."""
    t, u = res.trained, res.untrained_numbers
    tc, uc = t["class_counts"], u["class_counts"]
    margin = t["low_order_share"] - u["low_order_share"]
    eb_t, eb_u = tc["edge"] + tc["blob"], uc["edge"] + uc["blob"]
    key = "yes" if margin >= LOW_ORDER_MARGIN and eb_t > eb_u else "no"
    numbers: dict = {"layer": res.layer, "kernels": t["kernels"], "low_order_share": t["low_order_share"],
                     "low_order_share_init": u["low_order_share"], "margin": margin,
                     "required_margin": LOW_ORDER_MARGIN, "class_counts": tc, "class_counts_init": uc,
                     "edge_or_blob": eb_t, "edge_or_blob_init": eb_u}
    name = "kernels" if res.layer == "conv1" else "conv2 kernels"
    if key == "yes":
        text = (f"Yes: training turned the {name} towards smooth edge and blob patterns: "
                f"{100 * t['low_order_share']:.0f}% of their energy is in the mean and gradient against "
                f"{100 * u['low_order_share']:.0f}% before training, and {eb_t} of {t['kernels']:,} are edge or blob "
                f"detectors against {eb_u} before.")
    else:
        text = (f"No shift towards edge/blob structure of at least {100 * LOW_ORDER_MARGIN:.0f} points beyond the "
                f"initialization: {100 * t['low_order_share']:.0f}% of the {name}' energy is in the mean and gradient "
                f"against {100 * u['low_order_share']:.0f}% before training ({eb_t} of {t['kernels']:,} edge or blob "
                f"detectors against {eb_u} before).")
    cos = t.get("mean_cosine_to_init")
    if cos is not None:
        numbers.update(mean_cosine_to_init=cos, reshaped_below=RESHAPED_COSINE)
        text += (f" Their mean cosine similarity to their initial values is {cos:.2f}: "
                 + ("training reshaped them." if cos < RESHAPED_COSINE else
                    f"at least {RESHAPED_COSINE:g}, so they stayed close to where they started."))
    if compare is not None:
        numbers["compare_layer_low_order_share"] = compare.trained["low_order_share"]
        text += f" ({compare.layer}: {100 * compare.trained['low_order_share']:.0f}%.)"
    return Verdict("2.1" if res.layer == "conv1" else "2.2", key, text, PATTERN_RULE, numbers)


CLASS_LETTER = {"edge": "E", "blob": "B", "line": "L", "mixed": "·"}


def mosaic_axes(ax: Axes, tiles: np.ndarray, ncols: int, v: float, labels: list[str],
                colors: list[str] | None = None) -> AxesImage:
    """3×3 `tiles` in rows of `ncols` with a 2-unit gap under each for its 7-pt label; returns the image."""
    im = ax.imshow(mosaic(tiles, ncols, 1, 2), cmap=diverging_cmap(), vmin=-v, vmax=v, interpolation="nearest")
    for i, label in enumerate(labels):
        r, c = divmod(i, ncols)
        ax.text(c * 4 + 1, r * 5 + 3.2, label, ha="center", va="center", fontsize=7,
                color=colors[i] if colors is not None else "black")
    rows = -(-len(tiles) // ncols)
    ax.set_ylim(rows * 5 - 0.5, -0.5)          # the label band under the last row too
    ax.set_facecolor("#d9d9d9")                # ... in the colour of the other gaps
    for s in ax.spines.values():
        s.set_visible(False)
    ax.tick_params(length=0)
    return im


def _plot_conv1(res: FilterResult):
    """Top: the kernels (trained, untrained) in rows of 8, the kernel index on the axes and each
    kernel's class (and edge direction) under it; bottom: what the kernels are made of, and the
    directions of the edge kernels. Designed 6.8 in wide: printed at full size, no text under 7 pt."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..figures import FIG_WIDTH_IN, wrap_text
    panels = [("trained", res.weights, res.trained)]
    if res.reference is not None:
        panels.append(("untrained (same seed)", res.reference, res.untrained_numbers))
    fig = plt.figure(figsize=(FIG_WIDTH_IN, 6.6), layout="constrained")
    gs = fig.add_gridspec(2, 2, height_ratios=[1.25, 1])
    for j, (name, w, nums) in enumerate(panels):
        ax = fig.add_subplot(gs[0, j] if len(panels) > 1 else gs[0, :])
        st = kernel_stats(w)
        v = float(np.abs(w).max())
        labels, colors = [], []
        for i in range(w.shape[0]):
            cls = st["class"][i, 0]
            label = CLASS_LETTER[cls]
            if cls == "edge":
                label += direction_bin(float(st["gradient_direction_deg"][i, 0]))
            labels.append(label)
            colors.append("black" if cls != "mixed" else "#777777")
        im = mosaic_axes(ax, w[:, 0], 8, v, labels, colors)
        rows = -(-w.shape[0] // 8)
        ax.set_xticks(np.arange(8) * 4 + 1, [f"+{c}" for c in range(8)])
        ax.set_yticks(np.arange(rows) * 5 + 1, [str(8 * r) for r in range(rows)])
        ax.set(xlabel="kernel index: row + column")
        cc = nums["class_counts"]
        ax.set_title(f"{name}, colour scale ±{v:.2f}\nedge {cc['edge']} · blob {cc['blob']} · line {cc['line']} · "
                     f"mixed {cc['mixed']}\ngradient share {nums['mean_share']['gradient']:.0%} "
                     f"(chance {CHANCE_SHARE['gradient']:.0%})", fontsize=9)
        cb = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.06, shrink=0.8, aspect=30)
        cb.set_label("weight")
        cb.ax.locator_params(nbins=5)
    ax = fig.add_subplot(gs[1, 0])
    _share_bars(ax, res)
    ax = fig.add_subplot(gs[1, 1])
    bins = np.arange(len(DIRECTIONS))
    width = 0.38
    ax.bar(bins - width / 2, [res.trained["edge_directions"][d] for d in DIRECTIONS], width, label="trained", color="C0")
    if res.untrained is not None:
        ax.bar(bins + width / 2, [res.untrained["edge_directions"][d] for d in DIRECTIONS], width,
               label="untrained", color="C7")
    ax.set_xticks(bins, [f"{d}\n{45 * i}°" for i, d in enumerate(DIRECTIONS)], fontsize=7.5)
    ax.set(ylabel="edge kernels", xlabel="gradient direction (dark → bright)")
    ax.set_title("edge kernels by direction", fontsize=9.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
    ax.legend(fontsize=7.5, ncol=2, loc="upper center")
    extra = ""
    if res.untrained is not None:
        extra = (f"; cosine to initial kernels {res.trained['mean_cosine_to_init']:.2f}, "
                 f"moved {res.trained['relative_change_from_init']:.0%} of their norm")
    fig.suptitle(wrap_text(f"conv1: {res.weights.shape[0]} kernels 3×3 — under each: E edge (arrow: direction of "
                           "increasing brightness), B blob, L line, · mixed" + extra, fontsize=10), fontsize=10)
    return fig


def _share_bars(ax, res: FilterResult) -> None:
    groups = list(_GROUPS)
    x = np.arange(len(groups))
    width = 0.27
    ax.bar(x - width, [res.trained["mean_share"][g] for g in groups], width, label="trained", color="C0")
    if res.untrained is not None:
        ax.bar(x, [res.untrained["mean_share"][g] for g in groups], width, label="untrained", color="C7")
    ax.bar(x + width, [CHANCE_SHARE[g] for g in groups], width, label="i.i.d. chance", color="none",
           edgecolor="black", hatch="//")
    ax.set_xticks(x, ["mean\n(dc)", "gradient\n(edge)", "centre-\nsurround", "line\n(bar)", "higher"], fontsize=7.5)
    ax.set(ylabel="mean share of energy")
    ax.set_title(f"what the {res.layer} kernels are made of", fontsize=9.5)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.45)          # room for the legend above the bars
    ax.legend(fontsize=7.5, ncol=2, loc="upper center")


CONV2_SHOWN = 6      # conv2 figure: the strongest input-channel kernels shown per output filter
CONV2_GROUPS = 4     # ... in this many side-by-side groups of output filters


def _plot_conv2(res: FilterResult):
    """Top: for every output filter, its CONV2_SHOWN strongest input-channel kernels (by norm,
    strongest first) on one colour scale, the input channel under each; bottom: what each filter's
    kernels are made of and how many input channels it uses. Designed 6.8 in wide, text ≥ 7 pt:
    the full 32×32 mosaic cannot be read at that size."""
    import matplotlib.pyplot as plt

    from ..figures import FIG_WIDTH_IN, wrap_text
    w = res.weights
    n_out, n_in = w.shape[:2]
    k = min(CONV2_SHOWN, n_in)
    energy = (w.reshape(n_out, n_in, -1) ** 2).sum(-1)                  # [out, in]
    order = np.argsort(-energy, axis=1, kind="stable")[:, :k]            # strongest inputs first
    held = np.take_along_axis(energy, order, 1).sum(1) / np.maximum(energy.sum(1), 1e-30)
    v = float(np.quantile(np.abs(w), 0.995))
    per = -(-n_out // CONV2_GROUPS)
    fig = plt.figure(figsize=(FIG_WIDTH_IN, 6.6), layout="constrained")
    gs = fig.add_gridspec(2, 1, height_ratios=[1.55, 1])
    top = gs[0].subgridspec(1, CONV2_GROUPS)
    im = None
    axes = []
    for g in range(CONV2_GROUPS):
        outs = list(range(g * per, min(n_out, (g + 1) * per)))
        if not outs:
            continue
        ax = fig.add_subplot(top[g])
        axes.append(ax)
        tiles = np.stack([w[o, i] for o in outs for i in order[o]])
        im = mosaic_axes(ax, tiles, k, v, [str(int(i)) for o in outs for i in order[o]])
        ax.set_xticks([])
        ax.set_yticks(np.arange(len(outs)) * 5 + 1, [str(o) for o in outs])
        ax.set_title(f"filters {outs[0]}–{outs[-1]}", fontsize=9)
        if g == 0:
            ax.set_ylabel("output filter")
    if im is not None:
        cb = fig.colorbar(im, ax=axes, orientation="horizontal", fraction=0.04, shrink=0.6, aspect=40, pad=0.02)
        cb.set_label(f"weight (shared scale ±{v:.2f}, the 99.5th percentile of |w|)")
        cb.ax.locator_params(nbins=5)
    bottom = gs[1].subgridspec(1, 2, width_ratios=[1.9, 1])
    ax = fig.add_subplot(bottom[0])
    o = np.arange(len(res.kernels))
    base = np.zeros(len(o))
    colors = {"dc": "#bbbbbb", "gradient": "C0", "center_surround": "C1", "line": "C2", "higher": "C3"}
    names = {"dc": "mean (dc)", "gradient": "gradient", "center_surround": "centre-surround", "line": "line",
             "higher": "higher"}
    for grp in _GROUPS:
        vals = np.array([kk["energy_weighted_share"][grp] for kk in res.kernels])
        ax.bar(o, vals, bottom=base, color=colors[grp], label=names[grp], width=0.85)
        base += vals
    ax.set(xlabel="output filter", ylabel="share of filter energy", xlim=(-0.6, len(o) - 0.4))
    ax.set_title("what each filter's kernels are made of", fontsize=9.5)
    ax.set_xticks(o[::4])
    ax.yaxis.set_major_formatter(lambda val, _: f"{val:.0%}")
    ax.legend(fontsize=7.5, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)
    ax2 = fig.add_subplot(bottom[1])
    ax2.plot(o, [kk["effective_inputs"] for kk in res.kernels], "o-", ms=3, label="trained")
    if res.reference is not None:
        ax2.plot(o, [kk["untrained_effective_inputs"] for kk in res.kernels], "s-", ms=3, color="C7", label="untrained")
    ax2.set(xlabel="output filter", ylabel="effective input channels", ylim=(0, n_in))
    ax2.set_xticks(o[::8])
    ax2.set_title("input channels used", fontsize=9.5)
    ax2.legend(fontsize=7.5, loc="lower right")
    ax2.grid(alpha=0.3)
    t = res.trained
    text = (f"conv2: {n_out}×{n_in} kernels 3×3. Top: each output filter's {k} strongest input-channel kernels "
            f"(by norm, strongest left; the number under each is its input channel, a conv1 filter): "
            f"{held.mean():.0%} of a filter's energy on average.")
    kinds = ("edge", "blob", "line")
    if res.untrained is not None:
        u = res.untrained
        text += (" Trained vs untrained: " + ", ".join(f"{c} {t['class_counts'][c]} vs {u['class_counts'][c]}"
                                                         for c in kinds)
                 + f" of {n_out * n_in} kernels; gradient share {t['mean_share']['gradient']:.0%} vs "
                   f"{u['mean_share']['gradient']:.0%}; cosine to init {t['mean_cosine_to_init']:.2f}.")
    else:
        text += " " + ", ".join(f"{c} {t['class_counts'][c]}" for c in kinds) + f" of {n_out * n_in} kernels."
    fig.suptitle(wrap_text(text, fontsize=9), fontsize=9)
    return fig
