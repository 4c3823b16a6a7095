"""What the page says about confidence and the unsure rule, measured on the runs it shows."""

from __future__ import annotations

import hashlib
import io
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError
from ..model import N_CLASSES

if TYPE_CHECKING:
    import numpy.typing as npt
    from torch import nn

# "Unsure" when the top-2 margin is under half of the largest margin training aims for:
# (p1 − p2) / (1 − ε) < UNSURE_MARGIN, ε = the run's label smoothing. How often it fires differs
# from run to run (benchmarks/unsure.py compares runs), so the page quotes only the rates measured
# on the runs it shows (Explorer.calibration).
UNSURE_MARGIN = 0.5
# The page's sentences on confidence and on the unsure rule are measured on every loaded run:
# on CALIBRATION_IMAGES of its test images, evenly spread (every k-th: MNIST's test set is ordered,
# its first half the easier), and on the shipped drawings of non-digits (tools/make_non_digits.py).
CALIBRATION_IMAGES = 2000
CALIBRATION_VERSION = 1                 # bump when the cached measurements change meaning
NON_DIGITS_FILE = "non_digits.npz"


def uncertainty(probs: npt.ArrayLike, label_smoothing: float = 0.0) -> dict:
    """The page's "unsure" cue: the top-2 margin relative to the largest margin training aims
    for, 1 − ε (with label smoothing ε the right class is trained toward 1 − ε + ε/K and the
    others toward ε/K). Unsure when it is below UNSURE_MARGIN."""
    p = np.sort(np.asarray(probs, dtype=np.float64))
    rel = float((p[-1] - p[-2]) / max(1e-9, 1.0 - label_smoothing))
    return {"margin": round(rel, 4), "unsure": rel < UNSURE_MARGIN}


@cache
def non_digit_drawings() -> tuple[np.ndarray, tuple[str, ...], str]:
    """The shipped drawings of non-digits (uint8 [N, 28, 28], as the page's preprocessing made
    them: tools/make_non_digits.py), their names, and the file's SHA-256."""
    raw = files("cnnlab").joinpath("static").joinpath(NON_DIGITS_FILE).read_bytes()
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        images, names = np.asarray(z["images"], dtype=np.uint8), tuple(str(n) for n in z["names"])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(names):
        raise ConfigError(f"{NON_DIGITS_FILE}: expected N 28×28 images with N names; reinstall cnnlab")
    return images, names, hashlib.sha256(raw).hexdigest()


def probabilities(model: nn.Module, u8: np.ndarray, batch: int = 500) -> np.ndarray:
    """float64 [N, K] softmax of uint8 [N, 28, 28] images, fed on [0, 1] as everywhere here."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(u8), batch):
            x = torch.from_numpy(np.ascontiguousarray(u8[i:i + batch])).float().div(255).unsqueeze(1)
            out.append(torch.softmax(model(x).double(), 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, N_CLASSES))


def _spread(top: np.ndarray) -> dict:
    return {"median": float(np.median(top)), "p10": float(np.quantile(top, 0.1)), "max": float(top.max())}


def measure_run(model: nn.Module, label_smoothing: float, test_u8: np.ndarray, of: int, step: int,
                non_digits: np.ndarray | None) -> dict:
    """What the page quotes about one run: on its test images (`test_u8`, every `step`-th of
    `of`), how many the unsure rule flags and how high the top probability goes (and, with label
    smoothing, how many exceed the training target 1 − ε + ε/K); the same on the non-digits."""
    def flagged(p: np.ndarray) -> int:
        return sum(uncertainty(row, label_smoothing)["unsure"] for row in p)
    p = probabilities(model, test_u8)
    top = p.max(1)
    n = len(p)
    test: dict[str, Any] = {"n": n, "of": of, "step": step, "unsure": flagged(p),
                            "top_prob": _spread(top), "above_target": None}
    test["unsure_rate"] = test["unsure"] / n
    if label_smoothing > 0:
        target = 1 - label_smoothing + label_smoothing / p.shape[1]
        above = int((top > target).sum())
        test["above_target"] = {"threshold": target, "count": above, "rate": above / n}
    out: dict[str, Any] = {"test": test, "non_digits": None}
    if non_digits is not None and len(non_digits):
        q = probabilities(model, non_digits)
        k = flagged(q)
        out["non_digits"] = {"n": len(q), "unsure": k, "unsure_rate": k / len(q), "top_prob": _spread(q.max(1))}
    return out


def pct(p: float) -> str:
    """A probability as the page writes it (explore.js's pct)."""
    if p >= 0.9995:
        return ">99.9%"
    if p < 0.0005:
        return "<0.1%" if p > 0 else "0%"
    s = f"{100 * p:.{1 if p >= 0.1 else 2}f}"
    return (s.rstrip("0").rstrip(".") if "." in s else s) + "%"


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _sample(test: dict, noun: str) -> str:
    """'2,000 test digits (every 5th of the 10,000)'."""
    if test["step"] == 1 and test["n"] == test["of"]:
        return f"the {test['n']:,} test {noun}"
    return f"{test['n']:,} test {noun} (every {_ordinal(test['step'])} of the {test['of']:,})"


def confidence_note(cal: dict, name: str | None = None, noun: str = "digits") -> str:
    """The page's sentence on how confident this run is, from its measurements only."""
    t, nd, eps = cal["test"], cal["non_digits"], cal["label_smoothing"]
    top = t["top_prob"]
    who = f"{name}: " if name else ""
    if eps > 0:
        above = t["above_target"]
        text = (f"{who}Trained with label smoothing ε = {eps:g} (run.json), which aims the right class at "
                f"1 − ε + ε/10 = {pct(above['threshold'])} — a target, not a ceiling: of {_sample(t, noun)}, "
                f"{pct(above['rate'])} get a top probability above it (median {pct(top['median'])}, "
                f"highest {pct(top['max'])}).")
    else:
        text = (f"{who}Trained without label smoothing (run.json), so training pushes the right class "
                f"toward 100%: of {_sample(t, noun)}, the top probability has median {pct(top['median'])}, "
                f"10th percentile {pct(top['p10'])}, highest {pct(top['max'])}.")
    if nd:
        text += (f" The {nd['n']} non-digit drawings shipped with cnnlab get a median top probability of "
                 f"{pct(nd['top_prob']['median'])} (highest {pct(nd['top_prob']['max'])}).")
    return text


def unsure_note(cal: dict, name: str | None = None, noun: str = "digits") -> str:
    """The page's sentence on how often the unsure rule fires for this run, as measured."""
    t, nd = cal["test"], cal["non_digits"]
    text = (f"On {name or 'this run'}, the rule flags {pct(t['unsure_rate'])} ({t['unsure']:,}) of "
            f"{_sample(t, noun)}")
    if nd:
        text += (f" and {nd['unsure']} of the {nd['n']} non-digit drawings shipped with cnnlab (letters, "
                 f"shapes, scribbles, a dot); the other {nd['n'] - nd['unsure']} are not flagged")
    return text + "."

