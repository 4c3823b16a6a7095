"""2.1–2.2 the learned filters, against their initial values."""

from __future__ import annotations

import numpy as np

from ..analysis import untrained_for_run
from ..analysis.filters import filters, patterns_verdict
from .base import Context, Section, fig_to_data_uri


def section_filters(ctx: Context) -> list[Section]:
    """2.1–2.2 conv1 and conv2 filters"""
    p = ctx.printed
    untrained = untrained_for_run(ctx.best_run, ctx.best_model)
    f1 = filters(ctx.best_model, "conv1", reference=untrained)
    f2 = filters(ctx.best_model, "conv2", reference=untrained)
    ctx.results["filters"] = {"conv1": f1.to_dict(), "conv2": f2.to_dict()}

    s1 = Section("2.1", "conv1 filters", "Plot the conv1 layer filters. Do you observe interesting patterns?",
                 figures=[(fig_to_data_uri(f1.figure()), "The 32 learned 3×3 kernels of conv1 on one symmetric colour scale (white = 0), beside the same kernels before training (the run's seed), with what each detects.")])
    t, u = f1.trained, f1.untrained_numbers
    tc, uc = t["class_counts"], u["class_counts"]
    text = (f"Of the 32 kernels, {p('2.1.edge', tc['edge'], '{}')} are edge detectors (most of their energy in a "
            f"smooth gradient), {p('2.1.blob', tc['blob'], '{}')} blob/centre-surround detectors, "
            f"{tc['line']} line detectors and {tc['mixed']} mixed; before training the same kernels counted "
            f"{p('2.1.edge_init', uc['edge'], '{}')} edge, {uc['blob']} blob, {uc['line']} line and {uc['mixed']} mixed. "
            f"The share of kernel energy in the smooth low-order patterns (mean + gradient) is "
            f"{p('2.1.low_order', 100 * t['low_order_share'], '{:.0f}')}% after training against "
            f"{p('2.1.low_order_init', 100 * u['low_order_share'], '{:.0f}')}% at initialization "
            f"({100 * (f1.chance_share.get('dc', 0) + f1.chance_share.get('gradient', 0)):.0f}% expected for random kernels). ")
    s1.answer.append(text)
    s1.answer.append(patterns_verdict(f1))
    s1.numbers = {"trained": t, "untrained": u}

    s2 = Section("2.2", "Filters of a higher layer (conv2)", "Plot filters of a higher layer. Compare it with conv1 layer filters.",
                 figures=[(fig_to_data_uri(f2.figure()), "All 32×32 kernels of conv2 (rows: output filters, columns: input channels), with a per-filter summary.")])
    t2, u2 = f2.trained, f2.untrained_numbers
    eff = [float(k["effective_inputs"]) for k in f2.kernels if k.get("effective_inputs") is not None]
    txt = (f"conv2's 1,024 kernels each see one conv1 feature map. Their energy in smooth low-order patterns is "
           f"{p('2.2.low_order', 100 * t2['low_order_share'], '{:.0f}')}% (initialization "
           f"{p('2.2.low_order_init', 100 * u2['low_order_share'], '{:.0f}')}%) against "
           f"{100 * t['low_order_share']:.0f}% for conv1. ")
    if eff:
        txt += (f"An output filter draws on {p('2.2.eff_inputs', float(np.mean(eff)), '{:.1f}')} of its 32 input "
                f"channels on average (participation ratio), so a conv2 filter is a weighted combination of conv1 "
                f"features over a 10×10 pixel receptive field, and a single 3×3 slice of it is one term of that sum.")
    s2.answer.append(txt)
    s2.answer.append(patterns_verdict(f2, compare=f1))
    s2.numbers = {"trained": t2, "untrained": u2}
    return [s1, s2]
