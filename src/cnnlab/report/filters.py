"""Report sections 1.3–1.5 and 2.1–2.4: anatomy, filters, activations, occlusion.

Each builder returns a Section whose words are generated from the numbers it measured.
"""

from __future__ import annotations

import numpy as np
import torch

from .report import Context, Section, fig_to_data_uri


def _shape(s) -> str:
    return "×".join(str(v) for v in s)


def section_anatomy(ctx: Context) -> list[Section]:
    """1.3–1.5 layer shapes, parameters and neurons"""
    from .inspect import summary
    p = ctx.printed
    plain, bn = summary(batch_norm=False), summary(batch_norm=True)
    ctx.results["summary"] = {"plain": plain.to_dict(), "batch_norm": bn.to_dict()}

    s3 = Section("1.3", "Dimensions of the input and output of each layer",
                 "Report the dimensions of the input and output at each layer.")
    s3.tables.append({"caption": "Measured by forward hooks on a real forward pass (batch dimension left out); "
                                 "the batch-norm network adds bn1 and bn2 with unchanged shapes.",
                      "header": ["layer", "kind", "input", "output", "parameters", "neurons"],
                      "rows": [[r["name"], r["kind"], _shape(r["input_shape"]), _shape(r["output_shape"]),
                                f"{r['params']:,}", f"{r['neurons']:,}"] for r in bn.layers]})
    conv1 = next(r for r in plain.layers if r["name"] == "conv1")
    pool2 = next(r for r in plain.layers if r["name"] == "pool2")
    s3.answer.append(f"The 1×28×28 input becomes {p('1.3.conv1_out', _shape(conv1['output_shape']), '{}')} after conv1 "
                     f"(padding 1 keeps 28×28), is halved by each 2×2 pooling to "
                     f"{p('1.3.pool2_out', _shape(pool2['output_shape']), '{}')} after pool2, which flattens to "
                     f"{p('1.3.flat', int(np.prod(pool2['output_shape'])), '{:,}')} inputs of fc1; fc1 outputs 500 "
                     f"values and fc2 the 10 logits that softmax turns into class probabilities.")
    s3.numbers = {"layers": bn.layers}

    s4 = Section("1.4", "Number of parameters",
                 "How many parameters does your network have? How many of these are in the fully connected "
                 "layers and how many are in the convolutional layers?")
    pp, bp = plain.params, bn.params
    plain_params = {r["name"]: r["params"] for r in plain.layers}
    s4.answer.append(f"The network has <b>{p('1.4.total', pp['total'], '{:,}')}</b> learnable parameters: "
                     f"{p('1.4.conv', pp['conv'], '{:,}')} in the convolutional layers "
                     f"({p('1.4.conv_share', 100 * pp['conv'] / pp['total'], '{:.1f}')}%) and "
                     f"{p('1.4.fc', pp['fc'], '{:,}')} in the fully connected layers "
                     f"({p('1.4.fc_share', 100 * pp['fc'] / pp['total'], '{:.1f}')}%). fc1 alone, 1568×500 weights "
                     f"+ 500 biases, holds {100 * 784_500 / pp['total']:.1f}% of them. With batch-normalization "
                     f"the total is {p('1.4.total_bn', bp['total'], '{:,}')} (+{p('1.4.bn', bp['batch_norm'], '{}')}: "
                     f"a scale γ and shift β per channel of bn1 and bn2; their running means and variances are "
                     f"buffers, not parameters).")
    s4.tables.append({"caption": "Learnable parameters by layer (weights + biases).",
                      "header": ["layer", "plain", "batch-norm"],
                      "rows": [[r["name"], f"{plain_params[r['name']]:,}" if r["name"] in plain_params else "—",
                                f"{r['params']:,}"] for r in bn.layers if r["params"]]})
    s4.numbers = {"plain": pp, "batch_norm": bp}

    s5 = Section("1.5", "Number of neurons",
                 "How many neurons does your network have? How many of these are in the fully connected "
                 "layers and how many are in the convolutional layers?")
    n, q = plain.neurons, plain.neurons_with_pooling
    s5.answer.append(f"Counting a neuron as one output unit of a layer with learnable weights (so a conv layer "
                     f"has channels × height × width neurons, each sharing its channel's kernel): "
                     f"<b>{p('1.5.total', n['total'], '{:,}')}</b> neurons, "
                     f"{p('1.5.conv', n['conv'], '{:,}')} in the convolutional layers (32×28×28 + 32×14×14) and "
                     f"{p('1.5.fc', n['fc'], '{:,}')} in the fully connected layers (500 + 10). Published "
                     f"solutions disagree on this number because they count differently; counting the pooling "
                     f"outputs as neurons too gives {p('1.5.with_pool', q['total'], '{:,}')} "
                     f"(+{q['pool']:,}), and counting only channels (one \"neuron\" per filter) gives "
                     f"32 + 32 + 500 + 10 = 574.")
    s5.numbers = {"neurons": n, "neurons_with_pooling": q}
    return [s3, s4, s5]


def section_filters(ctx: Context) -> list[Section]:
    """2.1–2.2 conv1 and conv2 filters"""
    from .inspect import filters, untrained_for_run
    p = ctx.printed
    untrained = untrained_for_run(ctx.best_run, ctx.best_model)
    f1 = filters(ctx.best_model, "conv1", reference=untrained)
    f2 = filters(ctx.best_model, "conv2", reference=untrained)
    ctx.results["filters"] = {"conv1": f1.to_dict(), "conv2": f2.to_dict()}

    s1 = Section("2.1", "conv1 filters",
                 "Plot the conv1 layer filters. Do you observe interesting patterns?")
    s1.figures.append((fig_to_data_uri(f1.figure()),
                       "The 32 learned 3×3 kernels of conv1 on one symmetric colour scale (white = 0), beside the "
                       "same kernels before training (the run's seed), with what each detects."))
    t, u = f1.trained, f1.untrained
    tc, uc = t["class_counts"], u["class_counts"]
    cos = [k.get("cosine_to_init") for k in f1.kernels if k.get("cosine_to_init") is not None]
    text = (f"Of the 32 kernels, {p('2.1.edge', tc['edge'], '{}')} are edge detectors (most of their energy in a "
            f"smooth gradient), {p('2.1.blob', tc['blob'], '{}')} blob/centre-surround detectors, "
            f"{tc['line']} line detectors and {tc['mixed']} mixed; before training the same kernels counted "
            f"{p('2.1.edge_init', uc['edge'], '{}')} edge, {uc['blob']} blob, {uc['line']} line and {uc['mixed']} mixed. "
            f"The share of kernel energy in the smooth low-order patterns (mean + gradient) is "
            f"{p('2.1.low_order', 100 * t['low_order_share'], '{:.0f}')}% after training against "
            f"{p('2.1.low_order_init', 100 * u['low_order_share'], '{:.0f}')}% at initialization "
            f"({100 * (f1.chance_share.get('dc', 0) + f1.chance_share.get('gradient', 0)):.0f}% expected for random kernels). ")
    if cos:
        text += (f"The mean cosine similarity between a trained kernel and its own initialization is "
                 f"{p('2.1.cos_init', float(np.mean(cos)), '{:.2f}')}, so ")
        text += ("training reshaped the kernels substantially. " if np.mean(cos) < 0.8 else
                 "the kernels stayed close to where they started: the first layer learned little beyond its random init. ")
    if t["low_order_share"] > u["low_order_share"] + 0.05:
        text += "The pattern: training turns random kernels into oriented edge and blob detectors, as in the first layer of larger CNNs."
    else:
        text += "This run shows no clear shift towards smooth edge/blob structure beyond the initialization."
    s1.answer.append(text)
    s1.numbers = {"trained": t, "untrained": u}

    s2 = Section("2.2", "Filters of a higher layer (conv2)",
                 "Plot filters of a higher layer. Compare it with conv1 layer filters.")
    s2.figures.append((fig_to_data_uri(f2.figure()),
                       "All 32×32 kernels of conv2 (rows: output filters, columns: input channels), with a "
                       "per-filter summary."))
    t2, u2 = f2.trained, f2.untrained
    eff = [k.get("effective_inputs") for k in f2.kernels if k.get("effective_inputs") is not None]
    txt = (f"conv2's 1,024 kernels each see one conv1 feature map. Their energy in smooth low-order patterns is "
           f"{p('2.2.low_order', 100 * t2['low_order_share'], '{:.0f}')}% (initialization "
           f"{p('2.2.low_order_init', 100 * u2['low_order_share'], '{:.0f}')}%) against "
           f"{100 * t['low_order_share']:.0f}% for conv1: ")
    txt += ("like conv1 they are smoother than random, " if t2["low_order_share"] > u2["low_order_share"] + 0.03
            else "unlike conv1 they do not read as clean edge or blob patterns, ")
    if eff:
        txt += (f"and an output filter draws on {p('2.2.eff_inputs', float(np.mean(eff)), '{:.1f}')} of its 32 input "
                f"channels on average (participation ratio), so a conv2 filter is a combination of many conv1 "
                f"features: it detects arrangements of edges (strokes, corners, curve pieces) over a 10×10 pixel "
                f"receptive field, which is why a single 3×3 slice looks less interpretable than a conv1 kernel.")
    s2.answer.append(txt)
    s2.numbers = {"trained": t2, "untrained": u2}
    return [s1, s2]


def _pick_images(ctx: Context, n: int) -> list[int]:
    """The first test image of distinct digits (0, 1, 2, …), for reproducible examples."""
    y = ctx.split.test_y
    out = []
    for d in range(10):
        if len(out) >= n:
            break
        out.append(int(torch.nonzero(y == d)[0]))
    return out


def section_activations(ctx: Context) -> Section:
    """2.3 activations of the convolutional layers"""
    from .inspect import activations
    p = ctx.printed
    sec = Section("2.3", "Activations of the convolutional layers",
                  "Visualize the activations of the convolutional layers. What do you observe as you go deeper?")
    results = []
    for i in _pick_images(ctx, ctx.analysis.activation_images):
        x = ctx.split.test_x[i].float() / 255
        r = activations(ctx.best_model, x, label=int(ctx.split.test_y[i]), name=f"test image #{i}")
        results.append(r)
        sec.figures.append((fig_to_data_uri(r.figure(), dpi=90),
                            f"Feature maps after ReLU of conv1, pool1, conv2 and pool2 for test image #{i} "
                            f"(label {int(ctx.split.test_y[i])})."))
    layers = ["conv1", "pool1", "conv2", "pool2"]
    mean = lambda k, l: float(np.mean([r.stats[l][k] for r in results]))      # noqa: E731
    rows = [[l, _shape(results[0].stats[l]["shape"]), f"{results[0].stats[l]['receptive_field']}",
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


def section_occlusion(ctx: Context) -> Section:
    """2.4 occlusion maps and whether the learning is meaningful"""
    from .inspect import meaningfulness_figure, occlusion, occlusion_meaningfulness, untrained_for_run
    p = ctx.printed
    sec = Section("2.4", "Occluding parts of the image",
                  "Plot the probability of the class of interest as a function of the position of an occluder "
                  "(a grey square of 1 to 5 pixels). Based on this experiment, report if the learning is "
                  "meaningful or not.")
    occ = []
    for i in _pick_images(ctx, ctx.analysis.occlusion_images):
        x = ctx.split.test_x[i].float() / 255
        r = occlusion(ctx.best_model, x, target=int(ctx.split.test_y[i]), label=int(ctx.split.test_y[i]),
                      name=f"test image #{i}")
        occ.append(r)
        sec.figures.append((fig_to_data_uri(r.figure(), dpi=90),
                            f"p(class {r.target}) as a grey (0.5) patch of 1–5 pixels slides over test image #{i}; "
                            f"dark = the patch there hurts the prediction."))
    m = occlusion_meaningfulness(ctx.best_model, ctx.split.test_x, ctx.split.test_y, n=ctx.analysis.meaningfulness_n,
                                 reference=untrained_for_run(ctx.best_run, ctx.best_model))
    sec.figures.append((fig_to_data_uri(meaningfulness_figure(m), dpi=90),
                        "Share of the probability drop on the digit, per image: trained vs untrained network, "
                        "against the share expected if every position mattered equally."))
    tr, ur = m["trained"]["digit_region"], m["untrained"]["digit_region"]
    ts = m["trained"]["strokes"]
    lo, hi = tr["share_ci95"]
    meaningful = lo > tr["expected_share_mean"] and tr["share_mean"] > ur["share_mean"]
    sec.answer.append(
        f"Over {p('2.4.n', tr['images'], '{}')} correctly classified test images ({m['patch_size']}×{m['patch_size']} "
        f"grey patch), {p('2.4.share', 100 * tr['share_mean'], '{:.0f}')}% ± {100 * tr['share_std']:.0f}% of the drop "
        f"in the true class's probability falls on the digit (its strokes and {m['digit_margin_px']} px around them; "
        f"bootstrap 95% interval {p('2.4.ci_lo', 100 * lo, '{:.0f}')}–{p('2.4.ci_hi', 100 * hi, '{:.0f}')}%), while that "
        f"region covers {p('2.4.expected', 100 * tr['expected_share_mean'], '{:.0f}')}% of the positions "
        f"(enrichment {p('2.4.enrichment', tr['enrichment_mean'], '{:.2f}')}×). On the stroke pixels alone the share is "
        f"{100 * ts['share_mean']:.0f}% against {100 * ts['expected_share_mean']:.0f}% expected. The untrained network of "
        f"the same seed puts {p('2.4.untrained', 100 * ur['share_mean'], '{:.0f}')}% there "
        f"(enrichment {ur['enrichment_mean']:.2f}×). The median largest drop per image is "
        f"{m['trained']['max_drop_median']:.2f} for the trained network.")
    sec.answer.append("<b>The learning is meaningful:</b> the network's confidence depends on the pixels of the digit, "
                      "far more than chance or an untrained network would give, not on the background."
                      if meaningful else
                      "<b>Not shown by this run:</b> the drop is not concentrated on the digit clearly beyond chance "
                      "and the untrained network, so this experiment does not establish that the learning is meaningful.")
    ctx.results["occlusion"] = {"images": [r.to_dict() for r in occ],
                                "meaningfulness": {k: v for k, v in m.items() if k != "per_image"}}
    sec.numbers = {"meaningful": meaningful, "share_mean": tr["share_mean"], "ci95": [lo, hi],
                   "expected": tr["expected_share_mean"], "untrained_share_mean": ur["share_mean"]}
    return sec


BUILDERS = [section_anatomy, section_filters, section_activations, section_occlusion]
