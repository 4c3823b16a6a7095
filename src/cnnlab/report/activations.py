"""2.3 feature maps after ReLU and how they change with depth."""

from __future__ import annotations

import numpy as np

from ..analysis.activations import activations, depth_verdict
from .base import Context, Section, fig_to_data_uri, pick_images, shape_text


def section_activations(ctx: Context) -> Section:
    """2.3 activations of the convolutional layers"""
    p = ctx.printed
    sec = Section("2.3", "Activations of the convolutional layers",
                  "Visualize the activations of the convolutional layers. What do you observe as you go deeper?")
    results = []
    for j, i in enumerate(pick_images(ctx, ctx.analysis.activation_images)):
        x = ctx.split.test_x[i].float() / 255
        r = activations(ctx.best_model, x, label=int(ctx.split.test_y[i]), name=f"test image #{i}")
        results.append(r)
        fig = (fig_to_data_uri(r.figure()), f"The 32 feature maps of conv1, pool1, conv2 and pool2 (after ReLU) for "
                                            f"test image #{i} (a {int(ctx.split.test_y[i])}); black = 0.")
        (sec.figures if j == 0 else sec.appendix_figures).append(fig)
    v = sec.verdict(depth_verdict([r.stats for r in results]))
    n = v.numbers
    sizes, rf = n["map_sizes"], n["receptive_fields"]
    density = v.key.split("/")[0]
    sec.answer.append(
        f"Going deeper, the maps get smaller ({p('2.3.size_conv1', sizes[0], '{}')}×{sizes[0]} in conv1, "
        f"{p('2.3.size_pool2', sizes[-1], '{}')}×{sizes[-1]} after pool2) while each unit sees more of the image "
        f"({p('2.3.rf_conv1', rf[0], '{}')} → {p('2.3.rf_pool2', rf[-1], '{}')} pixels on a side). conv1's maps are "
        f"filtered copies of the digit: {p.pct('2.3.stroke_conv1', n['stroke_mass_conv1'], 0)} of their activation "
        f"lies on the cells holding the digit's strokes, which cover {p.pct('2.3.stroke_area_conv1', n['stroke_area_conv1'], 0)} "
        f"of the map. conv2's maps are "
        + {"sparser": "sparser", "denser": "denser", "similar": "about as dense"}[density]
        + f" ({p.pct('2.3.active_conv2', n['active_conv2'], 0)} of units active against "
          f"{p.pct('2.3.active_conv1', n['active_conv1'], 0)} in conv1)"
        + {"more localized": ", and each channel responds on a smaller part of its map (spread ",
           "more spread": ", and each channel responds over more of its map (spread ",
           "similar": ", and a channel's response covers about as much of its map (spread "}[v.key.split("/")[1]]
        + f"{p('2.3.spread_conv2', n['spread_conv2'], '{:.2f}')} against {p('2.3.spread_conv1', n['spread_conv1'], '{:.2f}')}"
          f")" + (": it marks where a larger part of the digit is rather than following every stroke."
                  if v.key.endswith("more localized") else "."))
    layers = ["conv1", "pool1", "conv2", "pool2"]
    mean = lambda k, l: float(np.mean([r.stats[l][k] for r in results]))      # noqa: E731
    rows = [[l, shape_text(results[0].stats[l]["shape"]), f"{results[0].stats[l]['receptive_field']}",
             f"{100 * mean('active_fraction', l):.0f}%", f"{mean('spread', l):.2f}",
             f"{100 * mean('stroke_mass_share', l):.0f}% (area {100 * mean('stroke_area_share', l):.0f}%)"] for l in layers]
    sec.appendix_tables.append({"caption": f"What changes with depth (mean over {len(results)} image(s)). Spread = "
                                           "share of a map's positions a channel's response effectively covers "
                                           "(1 = evenly spread, small = localized); on strokes = share of the "
                                           "activation on cells containing stroke pixels (and their share of the area).",
                                "header": ["layer", "shape", "receptive field (px)", "active units", "spread",
                                           "on strokes"],
                                "rows": rows})
    ctx.results["activations"] = [r.to_dict() for r in results]
    sec.numbers = {"images": [r.to_dict() for r in results]}
    return sec
