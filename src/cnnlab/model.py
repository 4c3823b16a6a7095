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
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .errors import CheckpointError
from .output import atomic_write_bytes

N_CLASSES = 10
MAX_CHECKPOINT_BYTES = 256 * 1024 * 1024   # the network is 3.3 MB, its training state ~10 MB
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081   # defaults; training sets them from the training split


class Net(nn.Module):
    def __init__(self, batch_norm: bool = False, n_classes: int = N_CLASSES,
                 mean: float = MNIST_MEAN, std: float = MNIST_STD):
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


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; CheckpointError for anything else (pickles too)."""
    from safetensors import SafetensorError
    from safetensors.torch import load
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        size = path.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path} is {size} bytes; a cnnlab checkpoint is a few MB "
                                  f"(limit {MAX_CHECKPOINT_BYTES}); refusing to read it")
        with open(path, "rb") as f:           # bounded: the file may grow between stat and read
            data = f.read(MAX_CHECKPOINT_BYTES + 1)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path} holds more than {MAX_CHECKPOINT_BYTES} bytes; refusing to read it")
    head = data[:2]
    if head in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or data[:2] == b"PK":
        raise CheckpointError(f"{path} is a pickle/torch.save file, not safetensors; cnnlab never "
                              f"unpickles files (that can run arbitrary code). Convert it with "
                              f"safetensors.torch.save_file in a trusted environment")
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])      # safetensors' own parser accepted it first
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("__metadata__ is not an object")
    except (SafetensorError, ValueError, UnicodeDecodeError, OSError, Exception) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({type(e).__name__}: "
                              f"{str(e)[:120]})") from None
    return tensors, meta


def load_weights(path: str | Path, batch_norm: bool | None = None, device="cpu") -> Net:
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
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = [f"{k} {list(tensors[k].shape)} (expected {list(expected[k])})"
             for k in sorted(set(expected) & set(tensors)) if tensors[k].shape != expected[k]]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if extra:
        problems.append("unexpected " + ", ".join(extra))
    if wrong:
        problems.append("wrong shape " + "; ".join(wrong))
    if problems:
        raise CheckpointError(f"{path} does not fit the {'batch-norm' if batch_norm else 'plain'} "
                              f"network: " + " | ".join(problems))
    # Every tensor must have the network's own dtype: an int64 tensor of 2^62 passes a
    # floating-point finiteness check and then computes NaN once cast to float32.
    dtypes = [f"{k} {str(tensors[k].dtype).replace('torch.', '')} (expected "
              f"{str(expected_dtype(model, k)).replace('torch.', '')})"
              for k in sorted(tensors) if tensors[k].dtype != expected_dtype(model, k)]
    if dtypes:
        raise CheckpointError(f"{path} holds tensors of the wrong type: " + "; ".join(dtypes))
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite values in {', '.join(bad)}")
    # Values that are finite but make the forward pass divide by zero or take a negative root.
    if not float(tensors["input_std"]) > 0:
        raise CheckpointError(f"{path}: input_std is {float(tensors['input_std'])}; the network "
                              f"divides its input by it, so it must be > 0")
    neg = [k for k in tensors if k.endswith("running_var") and bool((tensors[k] < 0).any())]
    if neg:
        raise CheckpointError(f"{path}: {', '.join(neg)} holds negative variances (must be ≥ 0)")
    model.load_state_dict({k: v.to(expected_dtype(model, k)) for k, v in tensors.items()})
    return model.to(device).eval()


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
