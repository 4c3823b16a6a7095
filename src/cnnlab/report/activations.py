"""2.3 feature maps after ReLU and how they change with depth."""

from __future__ import annotations

import numpy as np

from ..analysis.activations import activations, depth_verdict
from .base import Context, Section, fig_to_data_uri, pick_images, shape_text


def section_activations(ctx: Context) -> Section:
    """2.3 activations of the convolutional layers"""
    sec = Section("2.3", "Activations of the convolutional layers",
                  "Visualize the activations of the convolutional layers. What do you observe as you go deeper?")
    results = []
    for i in pick_images(ctx, ctx.analysis.activation_images):
        x = ctx.split.test_x[i].float() / 255
        r = activations(ctx.best_model, x, label=int(ctx.split.test_y[i]), name=f"test image #{i}")
        results.append(r)
        sec.figures.append((fig_to_data_uri(r.figure()),
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
    sec.answer.append(depth_verdict([r.stats for r in results]))
    ctx.results["activations"] = [r.to_dict() for r in results]
    sec.numbers = {"images": [r.to_dict() for r in results]}
    return sec
