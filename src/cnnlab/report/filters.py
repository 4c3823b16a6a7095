"""2.1–2.2 the learned filters, against their initial values."""

from __future__ import annotations

import numpy as np

from ..analysis import untrained_for_run
from ..analysis.activations import receptive_fields
from ..analysis.filter_history import filter_history
from ..analysis.filter_responses import what_filters_respond_to
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
                 figures=[(fig_to_data_uri(f1.figure()),
                           "The 32 learned 3×3 kernels of conv1 (red positive, blue negative, white 0), beside the "
                           "same kernels before training, each on its own colour scale; letters: E edge, B blob, "
                           "L line detector.")])
    v1 = s1.verdict(patterns_verdict(f1))
    t, u = f1.trained, f1.untrained_numbers
    tc, uc = t["class_counts"], u["class_counts"]
    eb, eb0 = tc["edge"] + tc["blob"], uc["edge"] + uc["blob"]
    cos = t.get("mean_cosine_to_init")
    imported = bool(ctx.best_run.imported)
    if imported:        # its own initial weights were never saved: "before" is a fresh network of the same kind
        cos = None
        s1.evidence.append("This network was trained elsewhere and imported: its own initial weights are not known, "
                           "so “before training” here means a freshly initialized network of the same layers "
                           "(PyTorch's default initialization), and how far each kernel moved is not measured.")
    if v1.key == "yes":
        s1.answer.append(f"<b>Some</b>: training turned part of conv1 towards edge and blob detectors: "
                         f"{p('2.1.edge_blob', eb, '{}')} of the 32 kernels are edge or blob detectors after training "
                         f"against {p('2.1.edge_blob_init', eb0, '{}')} before; the rest show no clear pattern.")
    else:
        s1.answer.append(f"<b>No clear pattern beyond the random start</b>: after training "
                         f"{p('2.1.edge_blob', eb, '{}')} of the 32 kernels look like edge or blob detectors, "
                         f"against {p('2.1.edge_blob_init', eb0, '{}')} of the same kernels before training.")
    if cos is not None:
        s1.answer.append(f"The kernels stay close to their random initial values (mean cosine similarity "
                         f"{p('2.1.cosine', cos, '{:.2f}')}, where 1 means unchanged in shape).")
    hist = filter_history(ctx.best_run)
    if hist is not None and hist.epochs >= 1:
        h1 = hist.layers["conv1"]["mean_cosine_to_init"]
        # whether longer training moves them is measured only when there was a second epoch
        if hist.epochs >= 2:
            s1.answer.append(f"Measured after every epoch, the mean cosine to the initial kernels is "
                             f"{p('2.1.cosine_epoch1', h1[1], '{:.2f}')} after the first and "
                             f"{p('2.1.cosine_last', h1[-1], '{:.2f}')} after the last "
                             f"({p('2.1.epochs', hist.epochs, '{}')}): longer training moves them "
                             + ("little." if h1[1] - h1[-1] < 0.1 else "further."))
        s1.appendix_figures.append((fig_to_data_uri(hist.figure()),
                                    "conv1 and conv2 epoch by epoch: the kernels at initialization and after each "
                                    "epoch, and their mean cosine similarity to their initial values."))
        ctx.results["filters"]["history"] = hist.to_dict()
    n_img = min(3000, len(ctx.split.test_x))
    resp = what_filters_respond_to(ctx.best_model, ctx.split.test_x[:n_img], top=100, reference=untrained)
    rs, r0 = resp.summary, resp.reference_summary or {}
    edges, edges0 = rs["patch_class_counts"]["edge"], (r0.get("patch_class_counts") or {}).get("edge")
    resp_text = (f"What the kernels respond to tells more than their weights: averaged over the "
                 f"{p('2.1.top', resp.top, '{}')} image patches that excite each kernel most, "
                 f"{p('2.1.edge_patches', edges, '{}')} of the 32 kernels respond to an edge (a stroke's border "
                 f"at some angle)")
    if edges0 is not None:
        resp_text += (f", against {p('2.1.edge_patches_init', edges0, '{}')} of the untrained kernels"
                      + (": on handwriting even random 3×3 kernels respond most to the edges of strokes, because "
                         "neighbouring pixels of a stroke are strongly alike."
                         if edges - edges0 <= 3 else ": training made more of them respond to edges."))
    else:
        resp_text += "."
    s1.evidence.append(resp_text)
    s1.appendix_figures.append((fig_to_data_uri(resp.figure()),
                                f"Each conv1 kernel beside the mean of the {resp.top} 3×3 test-image patches that excite "
                                f"it most (from {n_img} test images), for the trained and the untrained network."))
    ctx.results["filters"]["responses"] = resp.to_dict()
    s1.evidence.append(
        f"With one input channel and 3×3 kernels, conv1 can only compute local differences of brightness. The share "
        f"of the kernels' weight energy in smooth patterns (a constant plus a linear ramp: what an edge detector "
        f"is) is {p('2.1.low_order', 100 * t['low_order_share'], '{:.0f}')}% after training against "
        f"{p('2.1.low_order_init', 100 * u['low_order_share'], '{:.0f}')}% before.")
    s1.appendix.append(
        f"Kernel classes after training: {tc['edge']} edge, {tc['blob']} blob, {tc['line']} line, {tc['mixed']} mixed; "
        f"before: {uc['edge']} edge, {uc['blob']} blob, {uc['line']} line, {uc['mixed']} mixed. Random 3×3 kernels "
        f"put {100 * (f1.chance_share.get('dc', 0) + f1.chance_share.get('gradient', 0)):.0f}% of their energy in "
        f"the smooth patterns on average.")
    s1.numbers = {"trained": t, "untrained": u, "responses": resp.summary, "responses_untrained": resp.reference_summary,
                  "history": hist.to_dict() if hist is not None else None}

    s2 = Section("2.2", "Filters of a higher layer (conv2)", "Plot filters of a higher layer. Compare it with conv1 layer filters.",
                 figures=[(fig_to_data_uri(f2.figure()),
                           "For each of the 32 conv2 filters, its 6 strongest of 32 input-channel kernels (by "
                           "norm), the input channel under each; below, what each filter's kernels are made of and "
                           "how many input channels it uses.")])
    v2 = s2.verdict(patterns_verdict(f2, compare=f1))
    t2, u2 = f2.trained, f2.untrained_numbers
    eff = [float(k["effective_inputs"]) for k in f2.kernels if k.get("effective_inputs") is not None]
    cos2 = None if imported else t2.get("mean_cosine_to_init")
    rf = receptive_fields(ctx.best_model)
    txt = (f"Unlike conv1's, a conv2 filter is not one 3×3 picture: it is a stack of 32 kernels, one per conv1 "
           f"feature map, and it sums their responses, so it sees a {rf['conv2']}×{rf['conv2']}-pixel region of the "
           f"input instead of {rf['conv1']}×{rf['conv1']}. ")
    if v2.key == "yes":
        txt += (f"Training made its kernels smoother than at the start "
                f"({p('2.2.low_order', 100 * t2['low_order_share'], '{:.0f}')}% of the energy in smooth patterns against "
                f"{p('2.2.low_order_init', 100 * u2['low_order_share'], '{:.0f}')}% before)")
    else:
        txt += (f"Its kernels are no smoother than at the start "
                f"({p('2.2.low_order', 100 * t2['low_order_share'], '{:.0f}')}% of the energy in smooth patterns against "
                f"{p('2.2.low_order_init', 100 * u2['low_order_share'], '{:.0f}')}% before)")
    if cos2 is not None and cos is not None:
        txt += (f", and they moved {'more' if cos2 < cos else 'less'} than conv1's during training (mean cosine to "
                f"the initial values {p('2.2.cosine', cos2, '{:.2f}')} against {cos:.2f}).")
    else:
        txt += "."
    s2.answer.append(txt)
    if eff:
        s2.evidence.append(f"A conv2 filter draws on {p('2.2.eff_inputs', float(np.mean(eff)), '{:.1f}')} of its 32 input "
                           f"maps on average (the participation ratio of its kernels' energies), so each detects a "
                           f"combination of conv1's features rather than a single pattern.")
    s2.numbers = {"trained": t2, "untrained": u2}
    return [s1, s2]
