"""Question 2.3: feature maps after ReLU and how they change with depth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..config import STROKE_THRESHOLD
from ..errors import ConfigError
from ..model import Net
from ._shared import FEATURE_LAYERS, AnalysisResult, as_image, device_of, evaluating, mosaic
from .verdict import Verdict

if TYPE_CHECKING:
    import numpy.typing as npt
    from matplotlib.figure import Figure

# ---------------------------------------------------------------------------------------------
# Activations (question 2.3)
# ---------------------------------------------------------------------------------------------

def receptive_fields(model: Net) -> dict[str, int]:
    """Receptive field (pixels on a side) of one unit of each feature layer, from the modules'
    kernel sizes and strides: rf += (k − 1)·jump; jump *= stride."""
    rf, jump, out = 1, 1, {}
    for name in FEATURE_LAYERS:
        m = getattr(model, name)
        k = m.kernel_size[0] if isinstance(m.kernel_size, tuple) else m.kernel_size
        s = m.stride[0] if isinstance(m.stride, tuple) else m.stride
        rf += (k - 1) * jump
        jump *= s
        out[name] = rf
    return out


def _stroke_cells(image: torch.Tensor, size: int) -> np.ndarray:
    """Cells of a size×size grid over the image that contain stroke pixels (max-pool of the mask)."""
    mask = (image >= STROKE_THRESHOLD).float()[None, None]
    return (F.adaptive_max_pool2d(mask, size)[0, 0] > 0).numpy()


@dataclass
class ActivationResult(AnalysisResult):
    stem = "activations"
    image: np.ndarray                 # [28, 28]
    maps: dict[str, np.ndarray]       # layer -> [C, H, W] after ReLU
    stats: dict[str, dict]
    probs: np.ndarray
    label: int | None = None
    name: str = ""

    @property
    def pred(self) -> int:
        return int(self.probs.argmax())

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "pred": self.pred,
                "prob_pred": float(self.probs[self.pred]),
                "definitions": {
                    "active_fraction": "share of units > 0 (after ReLU)",
                    "active_channels": "channels with at least one unit > 0",
                    "effective_positions": "per active channel, (Σa)²/Σa² over its spatial positions "
                                           "(how many positions carry the response), averaged",
                    "spread": "effective_positions / positions: 1 = evenly spread, small = localized",
                    "stroke_mass_share": "share of the activation on grid cells that contain stroke "
                                         f"pixels (≥ {STROKE_THRESHOLD}); stroke_area_share is the share "
                                         "of cells that do",
                    "receptive_field": "pixels on a side that one unit sees"},
                "layers": self.stats}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"image": self.image, **self.maps}

    def figure(self) -> Figure:
        return _plot_activations(self)


def activations(model: Net, image: npt.ArrayLike | torch.Tensor, label: int | None = None, name: str = "") -> ActivationResult:
    """Feature maps after ReLU of conv1, pool1, conv2, pool2 for one image, and per-layer numbers
    that show what changes with depth."""
    img = as_image(image)
    with evaluating(model):
        feats = model.features(img[None, None].to(device_of(model)))
    rfs = receptive_fields(model)
    maps, stats = {}, {}
    for layer in FEATURE_LAYERS:
        a = feats[layer][0].float().cpu().numpy()
        maps[layer] = a
        C, H, W = a.shape
        mass = a.reshape(C, -1).sum(1)
        sq = (a.reshape(C, -1) ** 2).sum(1)
        active = mass > 0
        eff = mass[active] ** 2 / sq[active] if active.any() else np.zeros(0)
        cells = _stroke_cells(img, H)
        stats[layer] = {"shape": [C, H, W], "units": int(a.size), "positions": H * W,
                        "receptive_field": rfs[layer],
                        "active_fraction": float((a > 0).mean()),
                        "active_channels": int(active.sum()),
                        "mean_active_value": float(a[a > 0].mean()) if (a > 0).any() else 0.0,
                        "effective_positions": float(eff.mean()) if eff.size else 0.0,
                        "spread": float(eff.mean() / (H * W)) if eff.size else 0.0,
                        "stroke_mass_share": float(a[:, cells].sum() / max(a.sum(), 1e-30)),
                        "stroke_area_share": float(cells.mean())}
    probs = feats["probs"][0].double().cpu().numpy()
    return ActivationResult(img.numpy(), maps, stats, probs, label, name)


DEPTH_BAND = 0.02   # changes in active share or spread smaller than 2 points count as "similar"

DEPTH_RULE = (
    "Averaged over the images shown, conv2 against conv1 (both after ReLU): 'sparser' when the share of active "
    f"units falls by more than {100 * DEPTH_BAND:.0f} percentage points, 'denser' when it rises by more, otherwise "
    f"'similar'; 'more localized' when the spread (effective positions / positions per active channel) falls by "
    f"more than {100 * DEPTH_BAND:.0f} points, 'more spread' when it rises by more, otherwise 'similar'. The key "
    "is '<density>/<spread>'.")


def depth_verdict(stats: Sequence[Mapping]) -> Verdict:
    """2.3 "What do you observe as you go deeper?" from the per-layer `stats` of one or more
    `activations()` results (ActivationResult.stats)."""
    if not stats:
        raise ConfigError("depth_verdict needs the stats of at least one image")
    mean = lambda k, l: float(np.mean([s[l][k] for s in stats]))      # noqa: E731
    a1, a2 = mean("active_fraction", "conv1"), mean("active_fraction", "conv2")
    s1, s2 = mean("spread", "conv1"), mean("spread", "conv2")
    m1, m2 = mean("stroke_mass_share", "conv1"), mean("stroke_mass_share", "conv2")
    c1, c2 = mean("stroke_area_share", "conv1"), mean("stroke_area_share", "conv2")
    density = "sparser" if a2 < a1 - DEPTH_BAND else "denser" if a2 > a1 + DEPTH_BAND else "similar"
    spread = "more localized" if s2 < s1 - DEPTH_BAND else "more spread" if s2 > s1 + DEPTH_BAND else "similar"
    first = stats[0]
    sizes = [first[l]["shape"][1] for l in FEATURE_LAYERS]
    rf = [first[l]["receptive_field"] for l in FEATURE_LAYERS]
    text = (f"Going deeper, the maps shrink ({sizes[0]}×{sizes[0]} → {sizes[1]}×{sizes[1]} → "
            f"{sizes[3]}×{sizes[3]}) while each unit sees more of the image (receptive field {rf[0]} → {rf[-1]} "
            f"pixels). {100 * a1:.0f}% of conv1's units are active and {100 * a2:.0f}% of conv2's: "
            + {"sparser": "conv2 is sparser", "denser": "conv2 is denser",
               "similar": f"the same within {100 * DEPTH_BAND:.0f} points"}[density]
            + f". The spread of a channel's response goes from {s1:.2f} to {s2:.2f}: "
            + {"more localized": "each conv2 channel responds on fewer positions of its map than a conv1 channel, "
                                 "so its map follows less of the input and more a part of it",
               "more spread": "conv2 channels respond over more of their maps than conv1 channels",
               "similar": f"the same within {100 * DEPTH_BAND:.0f} points"}[spread]
            + f". On stroke cells lie {100 * m1:.0f}% of conv1's activation ({100 * c1:.0f}% of its cells) and "
              f"{100 * m2:.0f}% of conv2's ({100 * c2:.0f}% of its cells).")
    numbers = {"images": len(stats), "map_sizes": sizes, "receptive_fields": rf,
               "active_conv1": a1, "active_conv2": a2, "spread_conv1": s1, "spread_conv2": s2,
               "stroke_mass_conv1": m1, "stroke_mass_conv2": m2, "stroke_area_conv1": c1, "stroke_area_conv2": c2,
               "band": DEPTH_BAND}
    return Verdict("2.3", f"{density}/{spread}", text, DEPTH_RULE, numbers)


def _plot_activations(res: ActivationResult):
    """The image and the per-layer numbers against depth on top; below, one full-width row per
    layer with its 32 feature maps (16 a row, one colour scale per layer). Designed 6.8 in wide:
    printed at full size, no text under 7 pt."""
    import matplotlib
    import matplotlib.pyplot as plt

    from ..figures import FIG_WIDTH_IN
    layers = list(FEATURE_LAYERS)
    fig = plt.figure(figsize=(FIG_WIDTH_IN, 7.6), layout="constrained")
    gs = fig.add_gridspec(1 + len(layers), 1, height_ratios=[1.7] + [1.0] * len(layers))
    top = gs[0].subgridspec(1, 2, width_ratios=[1, 2.4])
    ax = fig.add_subplot(top[0])
    ax.imshow(res.image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    head = f"{res.name}\n" if res.name else ""
    truth = f"true {res.label}, " if res.label is not None else ""
    ax.set_title(f"{head}{truth}predicted {res.pred}\n({res.probs[res.pred]:.1%})", fontsize=9)
    axs = fig.add_subplot(top[1])
    xs = np.arange(len(layers))
    axs.plot(xs, [res.stats[l]["active_fraction"] for l in layers], "o-", label="active units")
    axs.plot(xs, [res.stats[l]["spread"] for l in layers], "s-", label="spread (effective\npositions / all)")
    axs.plot(xs, [res.stats[l]["stroke_mass_share"] for l in layers], "^-", label="activation on\nstroke cells")
    axs.plot(xs, [res.stats[l]["stroke_area_share"] for l in layers], "^--", color="C2", alpha=0.5,
             label="stroke cells (area)")
    axs.set_xticks(xs, layers)
    axs.set_ylim(0, 1.05)
    axs.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    axs.grid(alpha=0.3)
    axs.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    axs.set_title("with depth", fontsize=9.5)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="white")
    for i, layer in enumerate(layers):
        a = res.maps[layer]
        C, H, W = a.shape
        st = res.stats[layer]
        ax = fig.add_subplot(gs[1 + i])
        vmax = float(a.max()) or 1.0
        im = ax.imshow(mosaic(a, 16, 2, 2), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        rf = st["receptive_field"]
        ax.set_title(f"{layer} after ReLU: {C}×{H}×{W}, receptive field {rf}×{rf} px, "
                     f"{st['active_fraction']:.0%} of units active, {st['active_channels']}/{C} channels respond\n"
                     f"each response covers {st['effective_positions']:.0f} of {H * W} positions "
                     f"({st['spread']:.0%}); {st['stroke_mass_share']:.0%} of it on stroke cells "
                     f"({st['stroke_area_share']:.0%} of the area)", fontsize=7.5, loc="left")
        cb = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, aspect=8)
        cb.ax.locator_params(nbins=3)
        cb.ax.tick_params(labelsize=7.5)
    fig.suptitle(f"feature maps of the {res.maps[layers[0]].shape[0]} channels (16 a row; one colour scale "
                 "per layer, 0 = black)", fontsize=9.5)
    return fig
