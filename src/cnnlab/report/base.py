"""What every report section is made of: the context it reads, the Section it returns, and the
formatter that registers each printed number in results.json."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..analysis.likeness import LikenessResult
from ..analysis.verdict import Verdict
from ..config import AnalysisConfig
from ..figures import PRINT_WIDTH_IN, legibility
from ..runs import Run, open_run

if TYPE_CHECKING:
    from collections.abc import Iterable

    from matplotlib.figure import Figure

    from ..data import Split
    from ..model import Net

ASSIGNMENT = "EE5179 Deep Learning for Imaging — Programming Assignment 2: Convolutional Neural Networks"


class FigureURI(str):
    """A figure as a PNG data URI that remembers how it reads in print (`figures.legibility`):
    the report prints it `width_in` wide, so its text is `legibility["min_font_pt"]` points."""

    legibility: dict[str, Any]

    @property
    def width_in(self) -> float:
        return min(float(self.legibility["width_in"]), PRINT_WIDTH_IN)


def fig_to_data_uri(fig: Figure, dpi: int = 150) -> FigureURI:
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
    """One question's answer, in the order a marker reads it: the plain answer (one to three
    sentences), the figure and table the question asks for, a short paragraph of evidence; then,
    in the appendix, how the answer was decided (the verdicts' rules, the controls, the details)."""
    id: str                      # "1.1", "2.4", "3.1.2", ...
    title: str
    question: str                # the assignment's words
    answer: list[str] = field(default_factory=list)        # the plain answer (HTML-safe sentences)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (data URI, caption)
    tables: list[dict] = field(default_factory=list)            # {"caption", "header", "rows"}
    evidence: list[str] = field(default_factory=list)      # at most a short paragraph
    verdicts: list[Verdict] = field(default_factory=list)  # the judgments behind the answer (rules in the appendix)
    appendix: list[str] = field(default_factory=list)      # how it was decided, the details
    appendix_figures: list[tuple[str, str]] = field(default_factory=list)
    appendix_tables: list[dict] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    beyond: bool = False         # beyond the assignment: printed after the assignment's answers

    def verdict(self, v: Verdict) -> Verdict:
        """Keep `v` for the appendix and results.json; returns it so its key can word the answer."""
        self.verdicts.append(v)
        return v

    @property
    def has_appendix(self) -> bool:
        return bool(self.verdicts or self.appendix or self.appendix_figures or self.appendix_tables)


class Printed:
    """Formats numbers for the text and remembers each formatted string for results.json."""

    def __init__(self) -> None:
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
    """What every section reads: the report folder, the data, the runs and the analysis settings."""
    out: Path
    split: Split
    runs: dict[str, list[Path]]                  # "plain" / "batch_norm" → run folders, by seed
    best_run: Run                                # the network parts 2 and 3 analyse
    best_model: Net
    analysis: AnalysisConfig
    printed: Printed
    results: dict
    # How a section trains a network it needs (3.1.3's judge): cnnlab.train.train, passed in by
    # whoever builds the Context, so that no section imports the training loop. None: no training.
    trainer: Callable[..., Any] | None = None


def shape_text(s: Iterable[int]) -> str:
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


def drop_images(lk: LikenessResult) -> dict:
    """digit_likeness's numbers without the per-image lists (results.json stays small), but for
    the nearest class of each image."""
    return ({k: v for k, v in lk.to_dict().items() if k != "images"}
            | {"nearest_class": lk.per_image.get("nearest_class")})


def other_models(ctx: Context) -> dict:
    out = {}
    for p in ctx.runs["plain"] + ctx.runs["batch_norm"]:
        r = open_run(p)
        if r.path.resolve() != ctx.best_run.path.resolve():
            out[r.name] = r.load_model()
    return out


# Appendix B: every technical term the report uses, each explained in one clause for a student.
GLOSSARY: list[tuple[str, str]] = [
    ("Label smoothing", "training aims at probability 1 − ε + ε/10 for the true class and ε/10 for each other class "
                        "instead of 1 and 0, which keeps the network from becoming over-confident; the training loss "
                        "then cannot reach 0."),
    ("Validation set", "10,000 of the 60,000 training images held out of training and used to pick the best "
                       "checkpoint; the test set is used only for the final numbers."),
    ("p-value", "the probability of seeing a difference at least this large if there were no real difference; "
                "below 0.05 is taken as a real difference."),
    ("McNemar's test", "compares two networks on the same test images by counting only the images exactly one of "
                       "them gets right, and gives the p-value of so uneven a split."),
    ("95% confidence interval", "a range computed so that, in 95 of 100 repetitions of the experiment, it contains "
                                "the true value."),
    ("Paired t interval", "the 95% confidence interval of the average difference between two networks trained with "
                          "the same seeds."),
    ("Wilson interval", "a 95% confidence interval for a share of images (such as 93% of 500), which stays sensible "
                        "for small counts and shares near 0% or 100%."),
    ("Median, percentile", "the median is the middle value of a sorted list; the 90th percentile is the value below "
                           "which 90% of the list lies."),
    ("Cosine similarity", "1 when two kernels have the same shape (up to scale), 0 when they are unrelated."),
    ("Smooth (low-order) patterns", "the part of a 3×3 kernel explained by a constant plus a linear ramp: the shape "
                                    "of an edge detector."),
    ("Participation ratio", "how many of its 32 input maps a conv2 filter effectively uses: 32 if it weighs them "
                            "equally, 1 if it uses one."),
    ("Receptive field", "the square of input pixels that one unit of a layer can see."),
    ("Gradient ascent", "changing the input image step by step in the direction that raises the cost fastest, "
                        "with the network's weights held fixed."),
    ("Logit", "the network's score for a class before softmax turns the ten scores into probabilities."),
    ("MSE", "mean squared error: the average over the 784 pixels of the squared difference between two images."),
    ("Root-mean-square (RMS) difference", "the square root of the MSE: a typical per-pixel difference, in grey "
                                          "levels (0–255)."),
    ("Shortcut network", "a network trained so that it can only succeed by reading a cue other than the digit (here a "
                         "marker whose position encodes the label); a test of meaningfulness must reject it."),
    ("PCA prior", "keeping a generated image inside the space spanned by the main patterns (principal components) "
                  "of the training images, with the spread real digits have along each."),
    ("FGSM, PGD", "standard attacks: FGSM moves every pixel by ε in the direction that raises the loss, once; PGD "
                  "repeats smaller steps and stays within ε of the original image."),
    ("bf16", "a 16-bit floating-point format used to speed up training on CPUs that support it."),
]
