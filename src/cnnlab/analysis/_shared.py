"""Pieces every analysis shares: models held still, image and argument checks, mosaics, the ascent
results' figures (the ascent itself is `ascent.py`).

Nothing here changes a model: analyses run it in eval mode (under `inference_mode`, or with every
parameter's `requires_grad` off for input gradients) inside contexts that restore its previous
mode, so batch-norm running statistics and the weights stay exactly as they were.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..model import IMAGE_SIZE, N_CLASSES, Net
from ..output import OutputDir, as_output_dir

if TYPE_CHECKING:
    import numpy.typing as npt
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

    from ..runs import Run

FEATURE_LAYERS = ("conv1", "pool1", "conv2", "pool2")  # the layers whose outputs are feature maps


class AnalysisResult:
    """The one protocol of every per-question result: `to_dict()` (numbers, JSON-ready),
    `figure()` (a matplotlib Figure) and `save(directory)`, which writes STEM.json, STEM.png and,
    when the result has arrays, STEM.npz, each atomically. Front ends (CLI, report, notebook,
    explorer) call these and add only presentation."""
    stem: ClassVar[str] = "result"

    def to_dict(self) -> dict:
        raise NotImplementedError

    def figure(self) -> Any:
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays behind the figure (saved as .npz); none by default."""
        return {}

    def save(self, directory: str | Path | OutputDir, stem: str | None = None) -> list[Path]:
        """Through one output writer (output.OutputDir): atomic, never through a link, and never
        replacing a file cnnlab did not write. `stem` may name a subfolder ("test-3/occlusion")."""
        d = as_output_dir(directory)
        stem = stem or self.stem
        paths = [d.write_json(f"{stem}.json", self.to_dict()),
                 d.save_figure(self.figure(), f"{stem}.png", dpi=110)]
        arrays = self.arrays()
        if arrays:
            paths.append(d.save_npz(f"{stem}.npz", **arrays))
        return paths


class AscentResult(AnalysisResult):
    """Results of the input-gradient ascent (class models, targeted fakes): `cost`, `prob`,
    `pred` are [steps+1, T] histories over the T targets."""
    prob: np.ndarray
    pred: np.ndarray
    targets: np.ndarray

    @property
    def final_prob(self) -> np.ndarray:
        return self.prob[-1]

    @property
    def final_pred(self) -> np.ndarray:
        return self.pred[-1]

    def draw_targets(self, axes: Sequence[Axes], images: np.ndarray, extras: list[str]) -> None:
        """One panel per target: the image (0–255), target, prediction and confidence in the
        title (green when predicted as the target), plus `extras[i]`; no ticks on any of `axes`."""
        for i, ax in enumerate(axes[1:]):
            t, p, c = int(self.targets[i]), int(self.final_pred[i]), float(self.final_prob[i])
            ax.imshow(np.clip(images[i], 0, 255), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"target {t}\npred {p} ({pct(c)})" + extras[i], fontsize=8,
                         color="tab:green" if p == t else "tab:red")
        for ax in axes:
            ax.set_xticks([]), ax.set_yticks([])


def ascent_grid(T: int, title_lines: int = 3, ncols: int = 6, suptitle_lines: int = 2) -> tuple[Figure, list[Axes]]:
    """A figure FIG_WIDTH_IN wide (printed at full size) for the start or source image and `T`
    ascent images, in rows of `ncols` panels with room for `title_lines` lines of 8-pt title over
    each; returns (fig, the T + 1 axes). Spare cells at the end stay blank."""
    import matplotlib.pyplot as plt

    from ..figures import FIG_WIDTH_IN
    n = T + 1
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    cell = min(FIG_WIDTH_IN / ncols, 1.4)      # the images' height: with few panels they stay this size
    height = nrows * (0.85 * cell + title_lines * 8 * 1.25 / 72 + 0.1) + suptitle_lines * 9 * 1.3 / 72 + 0.15
    fig, axes = plt.subplots(nrows, ncols, figsize=(FIG_WIDTH_IN, height), squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration, then the model's previous mode again (batch-norm running
    statistics are never updated by anything in this module)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a module without any)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def inference_copy(model: Net) -> Net:
    """A private eval-mode copy for batched inference. On the CPU it is channels_last, which
    oneDNN runs about twice as fast for these convolutions (BENCHMARKS.md § Measurements behind
    defaults); the caller's model is never touched."""
    net = copy.deepcopy(model).eval()
    if device_of(net).type == "cpu":
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit memory_format
    return net


def as_image(image: npt.ArrayLike | torch.Tensor) -> torch.Tensor:
    """A [28, 28] float tensor in [0, 1] from [28, 28], [1, 28, 28] or [1, 1, 28, 28] input
    (uint8 pixels are divided by 255)."""
    x = torch.as_tensor(np.array(image) if not isinstance(image, torch.Tensor) else image)   # a copy: the caller's array may be read-only
    x = x.detach().cpu()
    x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    if x.dim() > 2 and x.shape[:-2].numel() == 1:
        x = x.reshape(x.shape[-2:])
    if tuple(x.shape) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ConfigError(f"expected one 28×28 image (shape [28, 28] or [1, 28, 28]); got shape "
                          f"{list(x.shape)}")
    if not torch.isfinite(x).all():
        raise ConfigError("the image holds NaN or infinite pixels")
    return x


def untrained_like(model: Net, seed: int) -> Net:
    """The network as it was before training: a fresh Net built right after
    `torch.manual_seed(seed)`, which is what `train` does, so its weights equal the run's initial
    weights. The input normalization buffers are copied from `model`. The global RNG is left as
    it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        ref = Net(batch_norm=model.batch_norm, mean=float(cast(torch.Tensor, model.input_mean)),
                  std=float(cast(torch.Tensor, model.input_std)))
    return ref.to(device_of(model)).eval()


def untrained_for_run(run: Run, model: Net | None = None) -> Net:
    """The untrained network of a run (same seed, same architecture)."""
    model = model if model is not None else run.load_model()
    return untrained_like(model, run.config.seed)




def mosaic(tiles: np.ndarray, ncols: int, gap_x: int = 1, gap_y: int = 1) -> np.ndarray:
    """Tiles [N, h, w] → one image in a grid of `ncols` columns, with NaN in the gaps between tiles."""
    n, h, w = tiles.shape
    nrows = -(-n // ncols)
    out = np.full((nrows * (h + gap_y) - gap_y, ncols * (w + gap_x) - gap_x), np.nan)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[r * (h + gap_y): r * (h + gap_y) + h, c * (w + gap_x): c * (w + gap_x) + w] = tiles[i]
    return out


def diverging_cmap() -> Colormap:
    import matplotlib
    return matplotlib.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")




# ---------------------------------------------------------------------------------------------
# The frozen network, and the checks of the ascents' arguments
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` in eval mode with no parameter requiring grad; both restored on exit.

    Eval mode matters for the batch-norm network: in train mode BatchNorm would mix the images of
    a batch and update its running statistics (buffers), i.e. change the trained model.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@contextlib.contextmanager
def few_threads(batch: int, limit: int = 64) -> Iterator[None]:
    """One intra-op thread while working on a small batch (≤ `limit` images), restored after.

    On tiny tensors the threads wait on each other more than they work (BENCHMARKS.md). torch's
    thread count belongs to the calling thread (OpenMP's per-thread setting), so a save-and-restore
    is exact even when the explorer's server runs two requests at once (tests/test_defects.py).
    """
    n = torch.get_num_threads()
    if batch <= limit and n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def check_targets(targets: int | Iterable[Any]) -> list[int]:
    if isinstance(targets, int):
        targets = [targets]
    try:
        out = [int(t) for t in targets]
    except (TypeError, ValueError):
        raise ConfigError(f"targets must be class numbers 0..{N_CLASSES - 1}; got {targets!r}") from None
    if not out:
        raise ConfigError("targets is empty: give at least one class 0..9")
    bad = [t for t in out if not 0 <= t < N_CLASSES]
    if bad:
        raise ConfigError(f"target class {bad[0]} is out of range: expected 0..{N_CLASSES - 1}")
    return out


def check_number(name: str, v: Any, lo: float | None = 0.0, lo_open: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number; got {v!r}") from None
    if not math.isfinite(f):
        raise ConfigError(f"{name} must be a finite number; got {v!r}")
    if lo is not None and (f < lo or (lo_open and f == lo)):
        raise ConfigError(f"{name} must be {'>' if lo_open else '≥'} {lo:g}; got {f:g}")
    return f


def check_int(name: str, v: Any, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
        raise ConfigError(f"{name} must be an integer ≥ {lo}; got {v!r}")
    return int(v)


# ---------------------------------------------------------------------------------------------
# Shared figure bits
# ---------------------------------------------------------------------------------------------

def pct(p: float) -> str:
    """A probability as a percentage that never rounds 0.9995 up to a misleading 100%."""
    if p >= 0.9995:
        return f"{p * 100:.2f}%" if p < 0.99995 else ">99.99%"
    return f"{p * 100:.1f}%" if p >= 0.1 else f"{p * 100:.2g}%"


def cost_figure(cost: np.ndarray, prob: np.ndarray, targets: np.ndarray, title: str) -> Figure:
    import matplotlib.pyplot as plt

    from ..figures import FIG_WIDTH_IN, wrap_text
    fig, (a, b) = plt.subplots(1, 2, figsize=(FIG_WIDTH_IN, 3.5), layout="constrained")
    steps = np.arange(len(cost))
    cmap = plt.get_cmap("tab10")
    for i, t in enumerate(targets):
        a.plot(steps, cost[:, i], color=cmap(int(t) % 10), lw=1.4, label=str(int(t)))
        b.plot(steps, prob[:, i], color=cmap(int(t) % 10), lw=1.4)
    a.set(xlabel="step", ylabel="C")
    a.set_title("cost C", fontsize=9.5)
    b.set(xlabel="step", ylabel="softmax p(target)", ylim=(-0.02, 1.02))
    b.set_title("confidence in the target", fontsize=9.5)
    b.legend(*a.get_legend_handles_labels(), title="target", fontsize=7.5, title_fontsize=8, ncol=1,
             loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.suptitle(wrap_text(title, fontsize=9.5), fontsize=9.5)
    return fig


def first_image_of(labels: torch.Tensor, digit: int) -> int:
    """Index of the first image labelled `digit` (the source of the targeted fakes: the assignment's
    example is an image of 2 made to read as 5)."""
    hits = (torch.as_tensor(labels).cpu() == int(digit)).nonzero()
    if not len(hits):
        raise ConfigError(f"the test set holds no image of digit {digit}; choose another --source-digit")
    return int(hits[0, 0])


# Images per forward on a CPU. The conv1 activations of 128 copies (128 × 32 × 28 × 28 × 4 B =
# 13 MB in fp32, half in bf16) stay in the 2 MiB-per-core L2 + 32 MiB L3; 1024 copies (103 MB) did
# not: occlusion of one image took 0.32 s in forwards of 1024 and 0.111 s in forwards of 128, with
# bit-identical fp32 results (benchmarks/FINDINGS-p11.md § 4). A GPU wants large batches instead.
CPU_CHUNK = 128
GPU_CHUNK = 4096


def chunk_for(dev: torch.device) -> int:
    return CPU_CHUNK if dev.type == "cpu" else GPU_CHUNK
