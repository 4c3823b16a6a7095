"""Networks whose answer to 2.4 is known by construction (the known-answer suite of 2.4).

Each case trains the assignment's network (cnnlab.model.Net) for a few seconds on MNIST images,
with or without a cue whose form encodes a class:

  marker      a small bright square; its position along a border encodes the class
  dim marker  the same, half as bright, along another border
  frame       a 1-px line on the image's edge; which stretch of the perimeter is lit encodes it
  grating     a faint (0–60 grey levels) grating over the whole image; its orientation encodes it
  texture     a faint (0–50) fixed random texture over the whole image, one per class
  glow        a faint (peak 60) broad blob behind the digit; its position encodes it

The cue's class is the label. With shuffled labels the labels are independent of the digits, so
the network cannot be reading the digit: the right answer is "not meaningful". With the true labels
and the cue present, the network may use both; whether it leans on the cue is measured with the
generator's exact parts (the cue on a blank image, no digit): when the label comes back from the
cue alone on more than half of the images, the right answer is "not meaningful" (the assignment's
own test: the digit is not what decides). Digit readers are trained on clean digits (plain,
batch-norm, little data, shifted copies, and with a label-independent cue) and must be
"meaningful"; untrained networks do not read the digit, so by the rule they are "not meaningful".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SIZE = 28
YY, XX = np.mgrid[:SIZE, :SIZE].astype(np.float64)


def _marker(c: int, value: int, side: str) -> np.ndarray:
    """A 3×3 square of `value` in slot c of ten along the top edge (rows 1–3) or the right edge
    (columns 24–26); none of them is one of the experiment's own marker slots."""
    out = np.zeros((SIZE, SIZE))
    at = 1 + int(round(c * 2.6))
    if side == "top":
        out[1:4, at:at + 3] = value
    else:
        out[at:at + 3, 24:27] = value
    return out


def _frame(c: int) -> np.ndarray:
    """Stretch c of ten along the 1-px edge of the image (clockwise from the top-left corner), at 200."""
    edge = ([(0, x) for x in range(SIZE)] + [(y, SIZE - 1) for y in range(1, SIZE)]
            + [(SIZE - 1, x) for x in range(SIZE - 2, -1, -1)] + [(y, 0) for y in range(SIZE - 2, 0, -1)])
    per = len(edge) / 10
    out = np.zeros((SIZE, SIZE))
    for y, x in edge[int(round(c * per)):int(round((c + 1) * per))]:
        out[y, x] = 200
    return out


def _grating(c: int) -> np.ndarray:
    th = np.pi * c / 10
    return 30 + 30 * np.cos(2 * np.pi * (XX * np.cos(th) + YY * np.sin(th)) / 4.0)


_TEXTURES = (np.random.default_rng(1234).random((10, SIZE, SIZE)) < 0.5) * 50.0


def _glow(c: int) -> np.ndarray:
    a = 2 * np.pi * c / 10
    cy, cx = 13.5 + 8 * np.sin(a), 13.5 + 8 * np.cos(a)
    return 60 * np.exp(-((YY - cy) ** 2 + (XX - cx) ** 2) / (2 * 4.0 ** 2))


CUES = {"marker": lambda c: _marker(c, 255, "top"), "dim marker": lambda c: _marker(c, 128, "right"),
        "frame": _frame, "grating": _grating, "texture": lambda c: _TEXTURES[c], "glow": _glow}
_CUE_STACK = {k: np.stack([f(c) for c in range(10)]) for k, f in CUES.items()}


def with_cue(digits_u8: np.ndarray, classes: np.ndarray, cue: str) -> np.ndarray:
    """uint8 [N, 28, 28]: each digit with the cue of its class laid under it (pixel-wise maximum)."""
    return np.maximum(np.asarray(digits_u8, np.float64), _CUE_STACK[cue][np.asarray(classes)]).round().astype(np.uint8)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str              # "shortcut", "mixed" (true labels + cue), "reader", "untrained"
    cue: str | None = None
    steps: int = 150
    batch_norm: bool = False
    n_train: int | None = None     # training images (None: all)
    shift: int = 0                 # px: random shifts of the training images (augmentation)
    noise_cue: str | None = None   # a cue in a random class's form, independent of the label
    lr: float = 2e-3


CASES = (
    Case("shortcut: marker, shuffled labels", "shortcut", "marker", steps=60),
    Case("shortcut: dim marker, shuffled labels", "shortcut", "dim marker", steps=100),
    Case("shortcut: frame stretch, shuffled labels", "shortcut", "frame", steps=100),
    Case("shortcut: faint grating, shuffled labels", "shortcut", "grating", steps=150),
    Case("shortcut: faint texture, shuffled labels", "shortcut", "texture", steps=150),
    Case("shortcut: faint glow, shuffled labels", "shortcut", "glow", steps=200),
    Case("shortcut: batch-norm, grating, shuffled labels", "shortcut", "grating", steps=150, batch_norm=True),
    Case("mixed: marker + true labels", "mixed", "marker", steps=150),
    Case("mixed: frame + true labels", "mixed", "frame", steps=150),
    Case("mixed: grating + true labels", "mixed", "grating", steps=150),
    Case("reader: plain", "reader", steps=150),
    Case("reader: batch-norm", "reader", steps=150, batch_norm=True),
    Case("reader: 500 training images", "reader", steps=150, n_train=500),
    Case("reader: shifted copies (±2 px)", "reader", steps=200, shift=2),
    Case("reader: with a label-independent marker", "reader", steps=150, noise_cue="marker"),
    Case("untrained: plain", "untrained", steps=0),
    Case("untrained: batch-norm", "untrained", steps=0, batch_norm=True),
)
CHEAP = ("shortcut: marker, shuffled labels", "shortcut: faint grating, shuffled labels", "reader: plain")


def _shifted(x: torch.Tensor, px: int, g: torch.Generator) -> torch.Tensor:
    """Each image moved by a random whole-pixel offset in [-px, px]² (zeros shifted in)."""
    out = torch.zeros_like(x)
    d = torch.randint(-px, px + 1, (len(x), 2), generator=g)
    for i, (dy, dx) in enumerate(d.tolist()):
        ys, yd = (slice(dy, SIZE), slice(0, SIZE - dy)) if dy >= 0 else (slice(0, SIZE + dy), slice(-dy, SIZE))
        xs, xd = (slice(dx, SIZE), slice(0, SIZE - dx)) if dx >= 0 else (slice(0, SIZE + dx), slice(-dx, SIZE))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


def train_case(case: Case, split, seed: int = 0, batch: int = 128):
    """The case's network after `case.steps` seeded Adam steps (eval mode) and its training seconds."""
    from cnnlab.model import Net
    torch.manual_seed(seed)
    net = Net(batch_norm=case.batch_norm, mean=split.mean, std=split.std).to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed + 11)
    n = case.n_train or len(split.train_x)
    xs, ys = split.train_x[:n, 0].numpy(), split.train_y[:n].numpy()
    opt = torch.optim.Adam(net.parameters(), lr=case.lr)
    net.train()
    for _ in range(case.steps):
        idx = torch.randint(0, n, (batch,), generator=g).numpy()
        y = ys[idx]
        if case.kind == "shortcut":
            y = torch.randint(0, 10, (batch,), generator=g).numpy()      # shuffled against the digits
        x_u8 = xs[idx]
        if case.cue is not None:
            x_u8 = with_cue(x_u8, y, case.cue)
        if case.noise_cue is not None:
            x_u8 = with_cue(x_u8, torch.randint(0, 10, (batch,), generator=g).numpy(), case.noise_cue)
        x = torch.from_numpy(x_u8).float().div(255)[:, None]
        if case.shift:
            x = _shifted(x, case.shift, g)
        loss = F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval(), time.perf_counter() - t0


def case_images(case: Case, split, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The images the experiment is given for this case (`--images`): test digits, each with the
    cue of its label (shortcut: a random label; mixed: the true one); clean test digits otherwise."""
    rng = np.random.default_rng(seed + 5)
    x, y = split.test_x[:n, 0].numpy(), split.test_y[:n].numpy().astype(np.int64)
    if case.kind == "shortcut":
        y = rng.integers(0, 10, n)
    if case.cue is not None:
        x = with_cue(x, y, case.cue)
    return x, y


def ground_truth(case: Case, net, split, n: int = 500, seed: int = 0) -> dict:
    """The right answer, from the generator's exact parts (no digit finder): accuracy on clean
    test digits (true labels), and how often the label comes back from the cue alone (the cue of a
    random class on a blank image)."""
    rng = np.random.default_rng(seed + 9)
    x, y = split.test_x[:n].float().div(255), split.test_y[:n]
    with torch.inference_mode():
        clean = float((net(x).argmax(1) == y).float().mean())
        cue_only = float("nan")
        if case.cue is not None:
            c = rng.integers(0, 10, n)
            blank = with_cue(np.zeros((n, SIZE, SIZE), np.uint8), c, case.cue)
            cue_only = float((net(torch.from_numpy(blank).float().div(255)[:, None]).argmax(1).numpy() == c).mean())
    if case.kind in ("shortcut", "untrained"):
        truth = "not meaningful"
    elif case.kind == "mixed":
        truth = "not meaningful" if cue_only > 0.5 else "mixed (cue alone ≤ 50%: no known answer)"
    else:
        truth = "meaningful" if clean >= 0.9 else "reader too weak (no known answer)"
    return {"truth": truth, "clean_accuracy": clean, "cue_only_accuracy": cue_only}
