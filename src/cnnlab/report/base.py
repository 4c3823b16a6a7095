"""What every report section is made of: the context it reads, the Section it returns, and the
formatter that registers each printed number in results.json."""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..analysis.verdict import Verdict
from ..config import AnalysisConfig
from ..figures import PRINT_WIDTH_IN, legibility
from ..runs import open_run

ASSIGNMENT = "EE5179 Deep Learning for Imaging — Programming Assignment 2: Convolutional Neural Networks"


class FigureURI(str):
    """A figure as a PNG data URI that remembers how it reads in print (`figures.legibility`):
    the report prints it `width_in` wide, so its text is `legibility["min_font_pt"]` points."""

    legibility: dict[str, Any]

    @property
    def width_in(self) -> float:
        return min(float(self.legibility["width_in"]), PRINT_WIDTH_IN)


def fig_to_data_uri(fig, dpi: int = 150) -> FigureURI:
    import matplotlib.pyplot as plt
    measured = legibility(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    uri = FigureURI("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    uri.legibility = measured
    return uri


@dataclass
class Section:
    id: str                      # "1.1", "2.4", "3.1.2", ...
    title: str
    question: str                # the assignment's words
    # paragraphs: HTML-safe strings, or Verdicts (shown as their answer in bold with their rule below)
    answer: list[str | Verdict] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (data URI, caption)
    tables: list[dict] = field(default_factory=list)            # {"caption", "header", "rows"}
    numbers: dict = field(default_factory=dict)

    @property
    def verdicts(self) -> list[Verdict]:
        return [a for a in self.answer if isinstance(a, Verdict)]


class Printed:
    """Formats numbers for the text and remembers each formatted string for results.json."""

    def __init__(self):
        self.values: dict[str, Any] = {}
        self.strings: dict[str, str] = {}

    def __call__(self, key: str, value, fmt: str = "{:.2f}") -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            s = "n/a"
        else:
            s = fmt.format(value)
        self.values[key] = value
        self.strings[key] = s
        return s

    def pct(self, key: str, frac: float, digits: int = 2) -> str:
        return self(key, 100.0 * frac if frac is not None else None, "{:." + str(digits) + "f}%")


def esc(s: Any) -> str:
    return html.escape(str(s))


@dataclass
class Context:
    out: Path
    split: Any
    runs: dict[str, list[Path]]
    best_run: Any
    best_model: Any
    analysis: AnalysisConfig
    printed: Printed
    results: dict


def shape_text(s) -> str:
    return "×".join(str(v) for v in s)


def pick_images(ctx: Context, n: int) -> list[int]:
    """The first test image of distinct digits (0, 1, 2, …), for reproducible examples."""
    y = ctx.split.test_y
    out: list[int] = []
    for d in range(10):
        if len(out) >= n:
            break
        out.append(int(torch.nonzero(y == d)[0]))
    return out


def drop_images(d: dict) -> dict:
    """digit_likeness output without the per-pixel lists (results.json stays small)."""
    return {k: v for k, v in d.items() if k != "images"} | {"nearest_class": d["images"].get("nearest_class")}


def other_models(ctx: Context) -> dict:
    out = {}
    for p in ctx.runs["plain"] + ctx.runs["batch_norm"]:
        r = open_run(p)
        if r.path.resolve() != ctx.best_run.path.resolve():
            out[r.name] = r.load_model()
    return out
