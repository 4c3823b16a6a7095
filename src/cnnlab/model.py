"""The network of the assignment, exactly, and its safetensors checkpoints.

input 1×28×28 → conv1 (32@3×3, stride 1, pad 1) → [bn1] → ReLU → maxpool 2×2/2
             → conv2 (32@3×3, stride 1, pad 1) → [bn2] → ReLU → maxpool 2×2/2
             → fc1 (500) → ReLU → fc2 (10) → softmax

The network takes pixels in [0, 1] and normalizes them itself (buffers `input_mean`, `input_std`,
saved with the weights), so occlusion, attacks and the user's own images all work in plain pixel
space. `forward` returns logits; probabilities are `softmax(logits)`.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .errors import CheckpointError
from .output import atomic_write_bytes

IMAGE_SIZE = 28                             # px: the side of an MNIST image, the network's input
N_CLASSES = 10
MAX_CHECKPOINT_BYTES = 256 * 1024 * 1024   # the network is 3.3 MB, its training state ~10 MB
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081   # defaults; training sets them from the training split


class Net(nn.Module):
    def __init__(self, batch_norm: bool = False, n_classes: int = N_CLASSES,
                 mean: float = MNIST_MEAN, std: float = MNIST_STD) -> None:
        super().__init__()
        self.batch_norm = batch_norm
        self.register_buffer("input_mean", torch.tensor(float(mean)))
        self.register_buffer("input_std", torch.tensor(float(std)))
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(32) if batch_norm else None
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(32, 32, kernel_size=3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(32) if batch_norm else None
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 7 * 7, 500)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(500, n_classes)
        # max-pool and ReLU commute exactly (both monotone), and pooling first makes the ReLU
        # (and its backward) run on a quarter of the values. The layer table turns this off to
        # show the order of the diagram; the function computed is the same either way.
        self.pool_before_relu = True
        # On a CPU, conv1 → pool1 → ReLU and pool2 → ReLU → flatten may run as cnnlab's own C kernels
        # (cnnlab.fused): the same function, faster. train() turns this on for its steps (and off
        # for the network it returns), the robustness stage for its bf16 attack steps; it acts only
        # where gradients are taken, so every prediction and evaluation runs torch's operators.
        self.fused_kernels = False

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.get_buffer("input_mean"), self.get_buffer("input_std")
        return (x - mean) / std

    def _block(self, x, conv, bn, relu, pool):
        return self._pool_relu(self._conv(x, conv, bn), relu, pool)

    @staticmethod
    def _conv(x, conv, bn):
        x = conv(x)
        return bn(x) if bn is not None else x

    def _pool_relu(self, x, relu, pool):
        return relu(pool(x)) if self.pool_before_relu else pool(relu(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        fast = self.fused_kernels and torch.is_grad_enabled()
        if fast and fused.applies(self, x):
            x = fused.conv1_pool_relu(x, self.conv1.weight, self.conv1.bias)
        else:
            x = self._block(x, self.conv1, self.bn1, self.relu1, self.pool1)
        h = self._conv(x, self.conv2, self.bn2)
        if fast and fused.pool2_applies(self, h):
            x = fused.pool2_relu_flatten(h)
        else:
            x = self.flatten(self._pool_relu(h, self.relu2, self.pool2))
        x = self.relu3(self.fc1(x))
        return self.fc2(x)

    def features(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Every intermediate of the diagram, in order: conv1 (after ReLU), pool1, conv2 (after
        ReLU), pool2, fc1 (after ReLU), logits, probs."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        h = self.normalize(x)
        h = self.conv1(h)
        h = self.bn1(h) if self.bn1 is not None else h
        out["conv1"] = h = F.relu(h)
        out["pool1"] = h = self.pool1(h)
        h = self.conv2(h)
        h = self.bn2(h) if self.bn2 is not None else h
        out["conv2"] = h = F.relu(h)
        out["pool2"] = h = self.pool2(h)
        out["fc1"] = h = F.relu(self.fc1(h.flatten(1)))
        out["logits"] = h = self.fc2(h)
        out["probs"] = F.softmax(h.float(), dim=1)
        return out


# ---------------------------------------------------------------------------------------------
# Checkpoints: safetensors only; nothing is ever unpickled.
# ---------------------------------------------------------------------------------------------

def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU fp32 tensors (channels_last weights are made contiguous)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_weights(model: Net, path: str | Path, extra: dict | None = None) -> None:
    from safetensors.torch import save
    meta = {"format": "cnnlab.Net", "batch_norm": str(int(model.batch_norm))}
    if extra:
        meta.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in extra.items()})
    atomic_write_bytes(Path(path), save(state_tensors(model), metadata=meta))


MAX_HEADER_BYTES = 100_000_000      # safetensors' own limit on its JSON header


def sniff_format(data: bytes) -> str:
    """What a weights file is, from its first bytes: "safetensors" (an 8-byte little-endian header
    length, then a JSON object that fits in the file), "huge header" (a safetensors header over
    MAX_HEADER_BYTES), "pickle" (a pickle stream or torch.save's zip), or "unknown". The
    safetensors test comes first: its first two bytes are the header length, which may read as a
    pickle's opcode (a header of 896 bytes starts 80 03)."""
    if len(data) >= 9 and data[8:9] == b"{":
        n = int.from_bytes(data[:8], "little")
        if n > MAX_HEADER_BYTES:
            return "huge header"
        if n <= len(data) - 8:
            return "safetensors"
    if (len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5) or data[:4] == b"PK\x03\x04":
        return "pickle"
    return "unknown"


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; CheckpointError for anything else (pickles too)."""
    from .schema import read_bytes_limited
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return parse_safetensors(read_bytes_limited(path, MAX_CHECKPOINT_BYTES, CheckpointError, "checkpoint"), path)


def parse_safetensors(data: bytes, path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of safetensors bytes read from `path` (named in errors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load
    kind = sniff_format(data)
    if kind == "pickle":
        raise CheckpointError(f"{path} is a pickle/torch.save file, not safetensors; cnnlab never "
                              f"unpickles files (that can run arbitrary code). Convert it with "
                              f"safetensors.torch.save_file in a trusted environment")
    if kind == "huge header":
        raise CheckpointError(f"{path} is not a valid safetensors file: its header declares {int.from_bytes(data[:8], 'little'):,} "
                              f"bytes, more than the {MAX_HEADER_BYTES:,}-byte limit (damaged, or not a checkpoint)")
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])      # safetensors' own parser accepted it first
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("__metadata__ is not an object")
    except (SafetensorError, ValueError, UnicodeDecodeError, KeyError, TypeError, RuntimeError, OverflowError) as e:
        # what safetensors' parser and json raise on malformed bytes; anything else is a bug, not a bad file
        raise CheckpointError(f"{path} is not a valid safetensors file ({type(e).__name__}: "
                              f"{str(e)[:120]})") from None
    return tensors, meta


def tensor_problems(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """Every way `tensors` differ from `expected` (name -> a tensor of the wanted shape and dtype):
    missing and unexpected names, wrong shapes, wrong dtypes (an int64 of 2^62 passes a float
    finiteness check, then computes NaN once cast), non-finite values. The one check of every
    tensor file cnnlab reads back (weights, the saved training state), before any is used."""
    def dt(t: torch.Tensor) -> str:
        return str(t.dtype).replace("torch.", "")

    def some(names: list[str]) -> str:
        return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    common = sorted(set(expected) & set(tensors))
    wrong = [f"{k} {list(tensors[k].shape)} (expected {list(expected[k].shape)})"
             for k in common if tensors[k].shape != expected[k].shape]
    types = [f"{k} {dt(tensors[k])} (expected {dt(expected[k])})" for k in common if tensors[k].dtype != expected[k].dtype]
    bad = [k for k in common if tensors[k].is_floating_point() and not bool(torch.isfinite(tensors[k]).all())]
    return ([f"missing {some(missing)}"] * bool(missing) + [f"unexpected {some(extra)}"] * bool(extra)
            + [f"wrong shape {'; '.join(wrong[:6])}"] * bool(wrong) + [f"wrong type {'; '.join(types[:6])}"] * bool(types)
            + [f"non-finite values in {some(bad)}"] * bool(bad))


def load_weights(path: str | Path, batch_norm: bool | None = None, device: str | torch.device = "cpu") -> Net:
    """A Net with the weights of `path`, in eval mode. `batch_norm=None` takes it from the file.

    Any difference between the file and the network (missing or extra tensors, wrong shapes,
    batch-norm vs plain) is a CheckpointError naming the difference.
    """
    tensors, meta = read_safetensors(path)
    has_bn = any(k.startswith("bn1.") for k in tensors)
    if batch_norm is None:
        batch_norm = has_bn
    elif batch_norm != has_bn:
        want, got = ("batch-norm", "plain") if batch_norm else ("plain", "batch-norm")
        raise CheckpointError(f"{path} holds the {got} network but the {want} network was asked for "
                              f"(bn1.*/bn2.* tensors {'absent' if batch_norm else 'present'})")
    model = Net(batch_norm=batch_norm)
    problems = tensor_problems(tensors, model.state_dict())
    if problems:
        raise CheckpointError(f"{path} does not fit the {'batch-norm' if batch_norm else 'plain'} "
                              f"network: " + " | ".join(problems))
    # Values that are finite but make the forward pass divide by zero or take a negative root.
    if not float(tensors["input_std"]) > 0:
        raise CheckpointError(f"{path}: input_std is {float(tensors['input_std'])}; the network "
                              f"divides its input by it, so it must be > 0")
    neg = [k for k in tensors if k.endswith("running_var") and bool((tensors[k] < 0).any())]
    if neg:
        raise CheckpointError(f"{path}: {', '.join(neg)} holds negative variances (must be ≥ 0)")
    bound = logit_bound(tensors)
    if not bound < MAX_LOGIT_BOUND:
        raise CheckpointError(f"{path}: these weights can compute non-finite logits ({bound:.3g}) on an image "
                              f"with pixels in [0, 1] (float32 overflows at 3.4e38, giving inf and "
                              f"NaN); a trained network stays far below {MAX_LOGIT_BOUND:.0e}: the "
                              f"file is damaged (input_std {float(tensors['input_std']):.3g})")
    model.load_state_dict({k: v.to(expected_dtype(model, k)) for k, v in tensors.items()})
    return model.to(device).eval()


MAX_LOGIT_BOUND = 1e30     # float32's 3.4e38, less a margin for inputs beyond [0, 1]


def logit_bound(tensors: dict[str, torch.Tensor]) -> float:
    """An upper bound on |logit| over every image with pixels in [0, 1], computed in float64 layer
    by layer (|layer(x)| ≤ Σ|w|·bound + |b|; ReLU and max-pool never increase it). Finite weights
    can still overflow float32 (input_std = 1e-45 makes the input 1e45): this says so at load,
    before evaluate, occlusion or the explorer compute NaN."""
    t = {k: v.detach().to(torch.float64) for k, v in tensors.items()}
    b = max(abs(float(t["input_mean"])), abs(1 - float(t["input_mean"]))) / float(t["input_std"])
    for layer, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("fc1", None), ("fc2", None)):
        w = t[f"{layer}.weight"]
        rows = w.abs().flatten(1).sum(1)                  # Σ|w| per output channel or unit
        out = rows * b + t[f"{layer}.bias"].abs()
        if bn is not None and f"{bn}.running_var" in t:
            scale = t[f"{bn}.weight"].abs() / torch.sqrt(t[f"{bn}.running_var"] + 1e-5)
            out = (out + t[f"{bn}.running_mean"].abs()) * scale + t[f"{bn}.bias"].abs()
        b = float(out.max())
        if not math.isfinite(b):
            return math.inf
    return b


def expected_dtype(model: nn.Module, key: str) -> torch.dtype:
    return model.state_dict()[key].dtype


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer: equal digests mean identical weights."""
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()
