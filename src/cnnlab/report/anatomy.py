"""1.3–1.5 layer shapes, parameters and neurons."""

from __future__ import annotations

import numpy as np

from ..analysis.anatomy import summary
from .base import Context, Section, shape_text


def section_anatomy(ctx: Context) -> list[Section]:
    """1.3–1.5 layer shapes, parameters and neurons"""
    p = ctx.printed
    plain, bn = summary(batch_norm=False), summary(batch_norm=True)
    ctx.results["summary"] = {"plain": plain.to_dict(), "batch_norm": bn.to_dict()}

    s3 = Section("1.3", "Dimensions of the input and output of each layer",
                 "Report the dimensions of the input and output at each layer.")
    s3.tables.append({"caption": "Measured by forward hooks on a real forward pass (batch dimension left out); "
                                 "bn1 and bn2 belong to the batch-norm network only and keep the shape.",
                      "header": ["layer", "kind", "input", "output", "parameters", "neurons"],
                      "rows": [[r["name"], r["kind"], shape_text(r["input_shape"]), shape_text(r["output_shape"]),
                                f"{r['params']:,}", f"{r['neurons']:,}"] for r in bn.layers]})
    conv1 = next(r for r in plain.layers if r["name"] == "conv1")
    pool2 = next(r for r in plain.layers if r["name"] == "pool2")
    s3.answer.append(f"The 1×28×28 input becomes {p('1.3.conv1_out', shape_text(conv1['output_shape']), '{}')} after conv1 "
                     f"(padding 1 keeps 28×28), is halved by each 2×2 pooling to "
                     f"{p('1.3.pool2_out', shape_text(pool2['output_shape']), '{}')} after pool2, which flattens to "
                     f"{p('1.3.flat', int(np.prod(pool2['output_shape'])), '{:,}')} inputs of fc1; fc1 outputs 500 "
                     f"values and fc2 the 10 logits that softmax turns into class probabilities.")
    s3.numbers = {"layers": bn.layers}

    s4 = Section("1.4", "Number of parameters",
                 "How many parameters does your network have? How many of these are in the fully connected "
                 "layers and how many are in the convolutional layers?")
    pp, bp = plain.params, bn.params
    plain_params = {r["name"]: r["params"] for r in plain.layers}
    fc1 = plain_params["fc1"]
    s4.answer.append(f"The network has <b>{p('1.4.total', pp['total'], '{:,}')}</b> learnable parameters: "
                     f"{p('1.4.conv', pp['conv'], '{:,}')} in the convolutional layers "
                     f"({p('1.4.conv_share', 100 * pp['conv'] / pp['total'], '{:.1f}')}%) and "
                     f"{p('1.4.fc', pp['fc'], '{:,}')} in the fully connected layers "
                     f"({p('1.4.fc_share', 100 * pp['fc'] / pp['total'], '{:.1f}')}%).")
    s4.evidence.append(f"fc1 alone (1568×500 weights + 500 biases) holds "
                       f"{p('1.4.fc1_share', 100 * fc1 / pp['total'], '{:.1f}')}% of them. With batch-normalization "
                       f"the total is {p('1.4.total_bn', bp['total'], '{:,}')} (+{p('1.4.bn', bp['batch_norm'], '{}')}: "
                       f"a scale and a shift per channel of bn1 and bn2; their running means and variances are "
                       f"buffers, not learned parameters).")
    s4.tables.append({"caption": "Learnable parameters by layer (weights + biases).",
                      "header": ["layer", "plain", "batch-norm"],
                      "rows": [[r["name"], f"{plain_params[r['name']]:,}" if r["name"] in plain_params else "—",
                                f"{r['params']:,}"] for r in bn.layers if r["params"]]})
    s4.numbers = {"plain": pp, "batch_norm": bp}

    s5 = Section("1.5", "Number of neurons",
                 "How many neurons does your network have? How many of these are in the fully connected "
                 "layers and how many are in the convolutional layers?")
    n, q = plain.neurons, plain.neurons_with_pooling
    per_unit = [r["output_shape"][0] for r in plain.layers if r["kind"] in ("conv", "fc")]   # filters and fc units
    s5.answer.append(f"Counting a neuron as one output value of a layer with weights: "
                     f"<b>{p('1.5.total', n['total'], '{:,}')}</b> neurons, "
                     f"{p('1.5.conv', n['conv'], '{:,}')} in the convolutional layers (32×28×28 + 32×14×14) and "
                     f"{p('1.5.fc', n['fc'], '{:,}')} in the fully connected layers (500 + 10).")
    s5.evidence.append(f"A convolutional neuron is one position of one feature map; all positions of a map share "
                       f"its 3×3 kernel. Counts differ with the convention: counting the pooling outputs as neurons "
                       f"too gives {p('1.5.with_pool', q['total'], '{:,}')}, and counting one neuron per filter "
                       f"gives {' + '.join(str(c) for c in per_unit)} = {p('1.5.per_filter', sum(per_unit), '{}')}.")
    s5.numbers = {"neurons": n, "neurons_with_pooling": q, "one_per_filter": sum(per_unit)}
    return [s3, s4, s5]
