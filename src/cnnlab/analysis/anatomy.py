"""Questions 1.3–1.5: the layer table, parameter and neuron counts, measured by forward hooks."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model import Net
from ._shared import IMAGE_SIZE, AnalysisResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NEURON_DEFINITION = ("a neuron is one output unit of a layer with learnable weights (conv or fully "
                     "connected): a conv layer has channels × height × width neurons, a fully "
                     "connected layer one per output; batch-norm, ReLU, pooling, flatten and "
                     "softmax add none")
POOLING_DEFINITION = "the same count plus every output unit of the two max-pooling layers"
SHAPE_NOTE = "shapes are per image (the batch dimension is left out), measured by forward hooks"


# ---------------------------------------------------------------------------------------------
# Anatomy: layer table, parameters, neurons (questions 1.3–1.5)
# ---------------------------------------------------------------------------------------------

_KINDS = ((nn.Conv2d, "conv"), (nn.BatchNorm2d, "batch_norm"), (nn.ReLU, "relu"),
          (nn.MaxPool2d, "maxpool"), (nn.Flatten, "flatten"), (nn.Linear, "fc"))


def _kind(module: nn.Module) -> str:
    for cls, name in _KINDS:
        if isinstance(module, cls):
            return name
    return type(module).__name__.lower()


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return (f"{module.out_channels}@{module.kernel_size[0]}×{module.kernel_size[1]}, "
                f"stride {module.stride[0]}, pad {module.padding[0]}")
    if isinstance(module, nn.MaxPool2d):
        return f"{module.kernel_size}×{module.kernel_size} max, stride {module.stride}"
    if isinstance(module, nn.Linear):
        return f"{module.in_features} → {module.out_features}"
    if isinstance(module, nn.BatchNorm2d):
        return "γ, β per channel + running stats"
    return ""


@dataclass
class Summary(AnalysisResult):
    stem = "summary"
    batch_norm: bool
    layers: list[dict]
    params: dict            # total, conv, fc, batch_norm (learnable parameters)
    neurons: dict           # total, conv, fc (NEURON_DEFINITION)
    neurons_with_pooling: dict  # total, conv, fc, pool (POOLING_DEFINITION)
    buffers: dict           # non-learnable tensors saved with the weights, by module

    def to_dict(self) -> dict:
        return {"batch_norm": self.batch_norm, "layers": self.layers, "params": self.params,
                "neurons": self.neurons, "neurons_with_pooling": self.neurons_with_pooling,
                "buffers": self.buffers,
                "definitions": {"neuron": NEURON_DEFINITION, "neurons_with_pooling": POOLING_DEFINITION,
                                "params": "learnable parameters (every nn.Parameter, frozen or not); batch-norm γ and β "
                                          "are counted in 'batch_norm' and in the total, not in 'conv'",
                                "shapes": SHAPE_NOTE}}

    def figure(self) -> Figure:
        """The layer table as a figure (monospace text)."""
        import textwrap

        import matplotlib.pyplot as plt

        from ..figures import FIG_WIDTH_IN
        size = 9.0                           # points; DejaVu Sans Mono is 0.6 em a character
        fit = int((FIG_WIDTH_IN - 0.4) * 72 / (0.6 * size))          # characters a line
        lines = [w for line in self.table_text().splitlines()
                 for w in (textwrap.wrap(line, fit, subsequent_indent="    ") or [""])]
        width = max(len(line) for line in lines) * 0.6 * size / 72 + 0.2
        fig = plt.figure(figsize=(width, size * 1.25 / 72 * (len(lines) + 1) + 0.2))
        fig.text(0.01, 0.99, "\n".join(lines), family="monospace", fontsize=size, va="top")
        return fig

    def table_text(self) -> str:
        """The layer table and totals as plain text."""
        def shp(s: Sequence[int]) -> str:
            return "×".join(map(str, s))
        rows = [("layer", "kind", "input", "output", "params", "neurons")]
        rows += [(r["name"], r["kind"], shp(r["input_shape"]), shp(r["output_shape"]),
                  f"{r['params']:,}", f"{r['neurons']:,}") for r in self.layers]
        widths = [max(len(row[i]) for row in rows) for i in range(6)]
        lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        p, n, q = self.params, self.neurons, self.neurons_with_pooling
        lines += ["", f"parameters: {p['total']:,} = conv {p['conv']:,} + fc {p['fc']:,}"
                      + (f" + batch-norm {p['batch_norm']:,}" if self.batch_norm else ""),
                  f"neurons: {n['total']:,} = conv {n['conv']:,} + fc {n['fc']:,}  ({NEURON_DEFINITION})",
                  f"neurons counting pooling outputs too: {q['total']:,} (+{q['pool']:,} pooling units)"]
        return "\n".join(lines)


def summary(batch_norm: bool = False, model: Net | None = None) -> Summary:
    """The layer table of the network (or of `model`), measured by hooks on a forward pass.

    The forward pass runs in the order of the diagram (conv → [bn] → ReLU → pool, see
    `Net.pool_before_relu`) on a copy of the model, so the given model is untouched.
    """
    net = copy.deepcopy(model).cpu().float() if model is not None else Net(batch_norm=batch_norm)
    net.eval()
    net.pool_before_relu = False
    batch_norm = bool(net.batch_norm)
    calls: list[tuple[str, nn.Module, tuple, tuple]] = []

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def fn(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            calls.append((name, module, tuple(inputs[0].shape[1:]), tuple(output.shape[1:])))
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in net.named_children()]
    try:
        x = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
        with torch.inference_mode():
            logits = net(x)
            probs = F.softmax(logits, dim=1)
    finally:
        for h in handles:
            h.remove()

    layers: list[dict[str, Any]] = [{"name": "input", "kind": "input", "input_shape": list(x.shape[1:]),
               "output_shape": list(x.shape[1:]), "params": 0, "neurons": 0, "units": x[0].numel(),
               "detail": "pixels in [0, 1], normalized inside"}]
    for name, module, in_shape, out_shape in calls:
        kind = _kind(module)
        units = math.prod(out_shape)
        layers.append({"name": name, "kind": kind, "input_shape": list(in_shape),
                       "output_shape": list(out_shape),
                       "params": sum(p.numel() for p in module.parameters()),
                       "neurons": units if kind in ("conv", "fc") else 0, "units": units,
                       "detail": _describe(module)})
    layers.append({"name": "softmax", "kind": "softmax", "input_shape": list(logits.shape[1:]),
                   "output_shape": list(probs.shape[1:]), "params": 0, "neurons": 0,
                   "units": probs[0].numel(), "detail": "probabilities"})

    def total(key: str, kinds: set[str]) -> int:
        return sum(r[key] for r in layers if r["kind"] in kinds)

    params = {"total": total("params", {"conv", "fc", "batch_norm"}), "conv": total("params", {"conv"}),
              "fc": total("params", {"fc"}), "batch_norm": total("params", {"batch_norm"})}
    neurons = {"total": total("neurons", {"conv", "fc"}), "conv": total("neurons", {"conv"}),
               "fc": total("neurons", {"fc"})}
    pool = total("units", {"maxpool"})
    with_pool = {"total": neurons["total"] + pool, "conv": neurons["conv"], "fc": neurons["fc"], "pool": pool}
    buffers = {}
    for name, module in net.named_modules():
        own = {k: b.numel() for k, b in module.named_buffers(recurse=False)}
        if own:
            buffers[name or "net"] = own
    return Summary(batch_norm, layers, params, neurons, with_pool, buffers)
