"""The control networks of question 2.4, whose answers are known without the model under test.

    N  negative control: M's architecture, freshly initialised, trained for a few seconds on the
       training images with labels drawn at random and written into the image as the position of
       a 3×3 white marker (a "Clever Hans" predictor, Lapuschkin et al. 2019; DecoyMNIST, Ross et
       al. 2017, moved to ten border slots so that its *position* is the code). It reads the
       marker and nothing else.
    P  positive control: the same, with the true labels and the marker in a random slot unrelated
       to the label: it reads the digit and ignores the marker.
    R  M's architecture with untrained weights (the model-randomisation check of Adebayo et al.).

They are trained here, from fresh weights, rather than derived from M: a control built from M
inherits M's shortcut and fails exactly when M is what the test must catch.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model import IMAGE_SIZE, N_CLASSES
from ._shared import chunk_for, device_of

MARKER = 3                # px: side of the white marker square
# Top-left corners (row, col) of the marker of class c: the 4-px border that MNIST's 20×20
# centred box leaves empty, on the stride-2 grid so one occlusion patch covers a marker exactly.
MARKER_SLOTS = ((0, 0), (0, 8), (0, 16), (0, 24), (24, 0), (24, 8), (24, 16), (24, 24), (12, 0), (12, 24))
SHORTCUT_STEPS = 40       # Adam steps of 128 images for N: it follows a moved marker on ~100%
READER_STEPS = 60         # Adam steps of 128 images for P: ~93% on clean MNIST test digits


def marker_box(c: int) -> np.ndarray:
    m = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    y, x = MARKER_SLOTS[int(c)]
    m[y:y + MARKER, x:x + MARKER] = True
    return m


def mark(images01: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Copies of [B, 1, 28, 28] images with the white marker of classes[i] pasted in."""
    out = images01.clone()
    for i, c in enumerate(classes.tolist()):
        y, x = MARKER_SLOTS[c]
        out[i, :, y:y + MARKER, x:x + MARKER] = 1.0
    return out


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """M's architecture (a deep copy, input normalisation buffers kept) with every layer that
    can re-initialise itself re-initialised under `seed`; the global RNG is left as it was."""
    net = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for mod in net.modules():
            if mod is not net and hasattr(mod, "reset_parameters"):
                mod.reset_parameters()  # type: ignore[operator]  # every module with the attribute defines it
    return net.eval()


def log_probs(net: nn.Module, x: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """log softmax [B, classes] in float64 of x [B, 1, 28, 28] on the [0, 1] scale, `batch`
    images per forward (default: `chunk_for`, a cache-sized chunk; far larger batches ran
    slower, their activations spilling out of cache)."""
    dev = device_of(net)
    batch = batch or chunk_for(dev)
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch].to(dev)
            if dev.type == "cpu":
                xb = xb.contiguous(memory_format=torch.channels_last)
            out.append(F.log_softmax(net(xb).double(), dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, N_CLASSES, dtype=torch.float64)


def _train_marked(model: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor | None, *,
                  seed: int, steps: int, batch: int = 128, lr: float = 2e-3) -> nn.Module:
    """M's architecture from fresh weights, `steps` Adam steps on marked training images. With
    `train_labels` None the labels are drawn at random and the marker carries them (N); else the
    labels are the true ones and the marker sits in a random slot, independent of them (P)."""
    net = fresh_copy(model, seed)
    dev = device_of(net)
    cpu = dev.type == "cpu"
    if cpu:     # channels_last: ~2× faster steps on CPU, the same function
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format
    g = torch.Generator().manual_seed(int(seed) + 6)
    if train_images.ndim == 3:
        train_images = train_images[:, None]
    n = len(train_images)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        slot = torch.randint(0, N_CLASSES, (batch,), generator=g)
        y = slot if train_labels is None else train_labels[idx]   # N: the marker is the label
        x = mark(train_images[idx].float().div(255.0), slot).to(dev)
        if cpu:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), y.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def train_shortcut(model: nn.Module, train_images: torch.Tensor, *, seed: int = 0,
                   steps: int = SHORTCUT_STEPS) -> nn.Module:
    """The negative control N: M's architecture trained on images whose labels are drawn at
    random (so independent of the digits) and written into the image as the marker's position."""
    return _train_marked(model, train_images, None, seed=seed + 1, steps=steps)


def train_reader(model: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor, *, seed: int = 0,
                 steps: int = READER_STEPS) -> nn.Module:
    """The positive control P: M's architecture trained on the true labels, with a marker in a
    random slot on every image so that it learns to ignore the marker."""
    return _train_marked(model, train_images, torch.as_tensor(train_labels), seed=seed + 3, steps=steps)
