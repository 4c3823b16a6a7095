"""2.3 feature maps after ReLU and how they change with depth."""

from __future__ import annotations

import numpy as np

from ..analysis.activations import activations
from .base import Context, Section, fig_to_data_uri, pick_images, shape_text


def section_activations(ctx: Context) -> Section:
    """2.3 activations of the convolutional layers"""
    p = ctx.printed
    sec = Section("2.3", "Activations of the convolutional layers",
                  "Visualize the activations of the convolutional layers. What do you observe as you go deeper?")
    results = []
    for i in pick_images(ctx, ctx.analysis.activation_images):
        x = ctx.split.test_x[i].float() / 255
        r = activations(ctx.best_model, x, label=int(ctx.split.test_y[i]), name=f"test image #{i}")
        results.append(r)
        sec.figures.append((fig_to_data_uri(r.figure(), dpi=90),
                            f"Feature maps after ReLU of conv1, pool1, conv2 and pool2 for test image #{i} "
                            f"(label {int(ctx.split.test_y[i])})."))
    layers = ["conv1", "pool1", "conv2", "pool2"]
    mean = lambda k, l: float(np.mean([r.stats[l][k] for r in results]))      # noqa: E731
    rows = [[l, shape_text(results[0].stats[l]["shape"]), f"{results[0].stats[l]['receptive_field']}",
             f"{100 * mean('active_fraction', l):.0f}%", f"{mean('spread', l):.2f}",
             f"{100 * mean('stroke_mass_share', l):.0f}% (area {100 * mean('stroke_area_share', l):.0f}%)"] for l in layers]
    sec.tables.append({"caption": f"What changes with depth (mean over {len(results)} image(s)). spread = effective "
                                  "positions / positions (1 = evenly spread, small = localized); on strokes = share of "
                                  "the activation on cells containing stroke pixels.",
                       "header": ["layer", "shape", "receptive field (px)", "active units", "spread", "on strokes"],
                       "rows": rows})
    a1, a2 = mean("active_fraction", "conv1"), mean("active_fraction", "conv2")
    s1, s2 = mean("spread", "conv1"), mean("spread", "conv2")
    sec.answer.append(
        f"Going deeper, the maps shrink (28×28 → 14×14 → 7×7) while each unit sees more of the image "
        f"(receptive field {results[0].stats['conv1']['receptive_field']} → {results[0].stats['pool2']['receptive_field']} pixels). "
        f"conv1 responds like a set of edge filters: its maps are recognizably the digit, "
        f"{p('2.3.active_conv1', 100 * a1, '{:.0f}')}% of units active. In conv2 "
        f"{p('2.3.active_conv2', 100 * a2, '{:.0f}')}% of units are active"
        + (" — sparser" if a2 < a1 else " — denser") +
        f", and the responses are {'more localized' if s2 < s1 else 'more spread out'} "
        f"(spread {p('2.3.spread_conv1', s1, '{:.2f}')} → {p('2.3.spread_conv2', s2, '{:.2f}')}): "
        f"each channel fires on particular parts of the digit rather than everywhere along the strokes, "
        f"so the maps look less like the input and more like abstract part detectors.")
    ctx.results["activations"] = [r.to_dict() for r in results]
    sec.numbers = {"images": [r.to_dict() for r in results]}
    return sec
