"""Images the network believes in: class models from noise and targeted fakes (assignment §3).

Both are gradient ascent on an input image X with the trained weights frozen:

    class model  (§3.1, "non-targeted attack"):  C = logits[target]
    targeted fake (§3.2, "targeted attack"):      C = logits[target] − β · MSE(X, source)
    update:                                       X ← X + step_size · dC/dX

The pixel scale is the whole trap of this exercise. The assignment starts X from Gaussian noise
centred at 128, i.e. on the 0–255 scale, while the network was trained on pixels in [0, 1] (and
normalizes them itself with the training mean and std). So here X lives on the 0–255 scale, the
network is fed X / 255, and dC/dX, `step_size`, `sigma`, `beta` and every MSE are on the 0–255
scale. (Feeding the 0–255 noise directly gives inputs ~255× out of the training distribution.)

All target classes run as one batch: in eval mode the network maps each image independently, so
the gradient of the summed cost with respect to the batch is each image's own gradient. Gradients
are taken with `torch.autograd.grad` with respect to X only, with every parameter's
`requires_grad` switched off (and restored afterwards): no weight gradient is ever computed and
the weights and buffers never change.

"Does it look like a digit?" is answered by measurement (`digit_likeness`): Pearson correlation
with the mean training image of each class (the nearest class is the most correlated mean), the
most correlated single training image, simple pixel statistics, the same numbers for real test
digits as a reference, and transfer: what independently trained networks predict for the image.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError

N_CLASSES = 10

# Defaults, all on the 0–255 pixel scale. Chosen by measurement on the 1-epoch test-fixture model
# and a 3-epoch `quick` model (numbers in the README and the issue-4 report):
STEPS = 200              # gradient steps
STEP_SIZE = 10000.0      # targeted fakes: X ← X + STEP_SIZE · dC/dX. On the 0–255 scale dC/dX is small
                         # (≈ 4e-4 per pixel at the starting noise for a 1-epoch model: 1/255 of the
                         # [0, 1]-scale gradient) and smaller still for the better-regularized `full`
                         # preset models (label smoothing, augmentation, weight decay). Measured on the
                         # full preset's plain and batch-norm models: 1000 fooled only 6 of 10 targets
                         # in 200 steps, 10000 all 10 (p ≥ 0.999) with correlation 0.70–0.83 to the source.
SYNTH_STEP_SIZE = 30000.0  # class models: the same update with C = logits[target]; 10000 left the full
                         # plain model at p = 0.97 for one class after 200 steps, 30000 reaches
                         # p ≥ 0.99 for every class on the full (plain and batch-norm), quick and
                         # 1-epoch models.
SIGMA = 32.0             # std of the initial Gaussian noise around 128 (grey levels)
NOISE_MEAN = 128.0       # the assignment's "Gaussian noise centred around 128"
BETA = 0.003             # weight of the MSE (grey levels², mean over the 784 pixels) in C of the
                         # targeted fake. β = 0.003 fooled all 10 targets (p ≥ 0.995) for sources
                         # 2 and 7 on a 1-epoch and a 3-epoch model while the fakes kept r ≈ 0.6–0.8
                         # with the source; β = 0.005 already left some targets unfooled, β ≥ 0.03
                         # fooled none (the pull to the source wins). See `beta_sweep`.
BLUR_SIGMA = 0.5         # pixels

# Regularized class models: the classic image priors (Yosinski et al. 2015, "Understanding neural
# networks through deep visualization"): clip to valid pixels, decay toward the black background
# (L2), blur now and then (no high frequencies), jitter the image by a few pixels before each
# forward (no pixel-exact tricks). Pass as `synthesize(model, **REGULARIZED)`.
# The step is 10× larger than plain because decay and blur take back much of every step; with
# step 3000 and l2 = 0.02 some classes stayed below p = 0.9.
REGULARIZED = dict(step_size=10_000.0, clip=True, l2=0.05, blur_every=4, blur_sigma=0.5, jitter=1)


# ---------------------------------------------------------------------------------------------
# The frozen network and the ascent loop shared by both methods
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def frozen(model: torch.nn.Module):
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
def few_threads(batch: int, limit: int = 64):
    """One intra-op thread while working on a small batch (≤ `limit` images), restored after.

    Measured on the 2-core development machine with other jobs running: one forward+backward of
    10 images took ~14–22 ms on 1 thread but ~230 ms on 2 (the threads wait on each other); on
    tiny tensors there is nothing to split anyway. `torch.set_num_threads` is process-global, so
    this is a plain save-and-restore.
    """
    n = torch.get_num_threads()
    if batch <= limit and n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_targets(targets) -> list[int]:
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


def _check_number(name: str, v, lo: float | None = 0.0, lo_open: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number; got {v!r}") from None
    if not math.isfinite(f):
        raise ConfigError(f"{name} must be a finite number; got {v!r}")
    if lo is not None and (f < lo or (lo_open and f == lo)):
        raise ConfigError(f"{name} must be {'>' if lo_open else '≥'} {lo:g}; got {f:g}")
    return f


def _check_int(name: str, v, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < lo:
        raise ConfigError(f"{name} must be an integer ≥ {lo}; got {v!r}")
    return int(v)


def initial_noise(n: int, sigma: float = SIGMA, seed: int = 0, mean: float = NOISE_MEAN) -> torch.Tensor:
    """[n, 28, 28] copies of ONE seeded noise image, mean + sigma·N(0, 1) on the 0–255 scale.

    Every target starts from the same noise, so a class model depends only on (seed, target):
    running one target alone gives the same image as that target's row of a full batch.
    """
    g = torch.Generator().manual_seed(int(seed))
    x = mean + sigma * torch.randn(28, 28, generator=g, dtype=torch.float64)
    return x.float().expand(n, 28, 28).clone()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, 28, 28] (radius 3σ, edges replicated)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    h = F.pad(x.unsqueeze(1), (r, r, r, r), mode="replicate")
    h = F.conv2d(h, k.view(1, 1, 1, -1))
    h = F.conv2d(h, k.view(1, 1, -1, 1))
    return h.squeeze(1)


@dataclass
class _Trace:
    images: torch.Tensor     # final X, [T, 28, 28], 0–255 scale
    cost: np.ndarray         # [steps+1, T]
    logit: np.ndarray        # [steps+1, T]  logits[target]
    prob: np.ndarray         # [steps+1, T]  softmax probability of the target
    pred: np.ndarray         # [steps+1, T]  predicted class
    mse: np.ndarray          # [steps+1, T]  MSE to the source (grey levels²); zeros without one


def _ascend(model, x0: torch.Tensor, targets: list[int], *, steps: int, step_size: float,
            source: torch.Tensor | None = None, beta: float = 0.0, clip: bool = False,
            l2: float = 0.0, blur_every: int = 0, blur_sigma: float = BLUR_SIGMA, jitter: int = 0,
            seed: int = 0) -> _Trace:
    """Gradient ascent of C = logits[target] − β·MSE(X, source) on X (0–255 scale), in one batch.

    Records C, the target's logit and probability, the predicted class and the MSE at X_0 … X_steps.
    """
    device = _device(model)
    T = len(targets)
    idx = torch.tensor(targets, device=device)
    rows = torch.arange(T, device=device)
    x = x0.to(device=device, dtype=torch.float32).clone()
    src = source.to(device=device, dtype=torch.float32) if source is not None else None
    g = torch.Generator().manual_seed(int(seed) + 1)   # jitter shifts; one shift for the whole batch
    hist = {k: np.zeros((steps + 1, T), dtype=np.float64) for k in ("cost", "logit", "prob", "mse")}
    hist["pred"] = np.zeros((steps + 1, T), dtype=np.int64)

    def record(k: int, logits: torch.Tensor, mse: torch.Tensor) -> None:
        logits = logits.detach().double()
        logit_t = logits[rows, idx]
        hist["logit"][k] = logit_t.cpu().numpy()
        hist["cost"][k] = (logit_t - beta * mse.detach().double()).cpu().numpy()
        hist["prob"][k] = logits.softmax(1)[rows, idx].cpu().numpy()
        hist["pred"][k] = logits.argmax(1).cpu().numpy()
        hist["mse"][k] = mse.detach().double().cpu().numpy()

    def mse_of(x: torch.Tensor) -> torch.Tensor:
        if src is None:
            return torch.zeros(T, device=device)
        return ((x - src) ** 2).mean(dim=(1, 2))

    with frozen(model), few_threads(T if device.type == "cpu" else 10**9):
        for k in range(steps + 1):
            x.requires_grad_(True)
            if jitter and k < steps:
                dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g))
                xin = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
            else:
                xin = x
            logits = model((xin / 255.0).unsqueeze(1))        # the network takes [0, 1] pixels
            mse = mse_of(x)
            cost = logits[rows, idx] - beta * mse
            if k == steps:                                    # X_steps: record only
                record(k, logits, mse)
                break
            (d,) = torch.autograd.grad(cost.sum(), x)         # images independent in eval mode
            if jitter:                                        # record the unshifted image
                with torch.no_grad():
                    record(k, model((x / 255.0).unsqueeze(1)), mse)
            else:
                record(k, logits, mse)
            with torch.no_grad():
                x = x.detach() + step_size * d
                if l2:
                    x.mul_(1.0 - l2)                          # decay toward black (0)
                if blur_every and (k + 1) % blur_every == 0:
                    x = gaussian_blur(x, blur_sigma)
                if clip:
                    x.clamp_(0.0, 255.0)
        x = x.detach()
    return _Trace(x.cpu(), hist["cost"], hist["logit"], hist["prob"], hist["pred"], hist["mse"])


# ---------------------------------------------------------------------------------------------
# Class models from noise (§3.1)
# ---------------------------------------------------------------------------------------------

@dataclass
class SynthesisResult:
    """Class models: `images` [T, 28, 28] and `initial` [T, 28, 28] on the 0–255 scale; `cost`,
    `prob`, `pred`, `logit` [steps+1, T] per step (row 0 is the initial noise); `params` the
    settings used."""
    images: np.ndarray
    initial: np.ndarray
    targets: np.ndarray
    cost: np.ndarray
    prob: np.ndarray
    pred: np.ndarray
    logit: np.ndarray
    params: dict
    seconds: float = 0.0
    label: str = ""

    @property
    def final_prob(self) -> np.ndarray:
        return self.prob[-1]

    @property
    def final_pred(self) -> np.ndarray:
        return self.pred[-1]

    def summary(self) -> dict:
        hit = self.final_pred == self.targets
        rises = np.diff(self.cost, axis=0)
        return {"all_predicted_as_target": bool(hit.all()),
                "n_predicted_as_target": int(hit.sum()),
                "min_target_prob": float(self.final_prob.min()),
                "mean_target_prob": float(self.final_prob.mean()),
                "cost_start_mean": float(self.cost[0].mean()),
                "cost_end_mean": float(self.cost[-1].mean()),
                "fraction_of_steps_cost_rises": float((rises > 0).mean()) if rises.size else 1.0,
                "pixel_min": float(self.images.min()), "pixel_max": float(self.images.max()),
                "fraction_pixels_outside_0_255": float(((self.images < 0) | (self.images > 255)).mean())}

    def to_dict(self) -> dict:
        """Numbers only, JSON-able (for results.json)."""
        return {"label": self.label, "params": self.params, "seconds": round(self.seconds, 3),
                "targets": self.targets.tolist(),
                "final_target_prob": self.final_prob.tolist(),
                "final_pred": self.final_pred.tolist(),
                "final_cost": self.cost[-1].tolist(), "initial_cost": self.cost[0].tolist(),
                **self.summary()}

    def save_npz(self, path) -> Path:
        """`images` [T, 28, 28] 0–255, `targets` [T], `cost` [steps+1, T], `prob` [steps+1, T],
        `initial` [T, 28, 28] (plus `pred` [steps+1, T])."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, images=self.images.astype(np.float32), targets=self.targets,
                            cost=self.cost.astype(np.float32), prob=self.prob.astype(np.float32),
                            initial=self.initial.astype(np.float32), pred=self.pred)
        return path

    def figure(self, likeness: dict | None = None):
        """The generated images with target, prediction and confidence (green: predicted as the
        target). Shown on 0–255 with values outside clipped for display, plus the initial noise.
        With `likeness` (from `digit_likeness`), each title adds r = correlation with the
        target's class-mean training image."""
        import matplotlib.pyplot as plt
        T = len(self.targets)
        fig, axes = plt.subplots(1, T + 1, figsize=(1.45 * (T + 1), 2.15), squeeze=False)
        axes = axes[0]
        axes[0].imshow(self.initial[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[0].set_title(f"start: noise\n128 ± {self.params.get('sigma', 0):g}", fontsize=8)
        for i, ax in enumerate(axes[1:]):
            t, p, c = int(self.targets[i]), int(self.final_pred[i]), float(self.final_prob[i])
            ax.imshow(self.images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            title = f"target {t}\npred {p} ({_pct(c)})"
            if likeness is not None:
                title += f"\nr = {likeness['images']['corr_target_mean'][i]:+.2f}"
            ax.set_title(title, fontsize=8, color="tab:green" if p == t else "tab:red")
        for ax in axes:
            ax.set_xticks([]), ax.set_yticks([])
        s = self.summary()
        shown = (f"; pixels span {s['pixel_min']:.0f}..{s['pixel_max']:.0f}, shown clipped to 0..255"
                 if s["fraction_pixels_outside_0_255"] > 0 else "")
        fig.suptitle(f"{self.label or 'class models'}: X ← X + {self.params['step_size']:g}·dC/dX, "
                     f"C = logits[target], {self.params['steps']} steps — {s['n_predicted_as_target']}/{T} "
                     f"predicted as target, min confidence {_pct(s['min_target_prob'])}{shown}", fontsize=9)
        fig.tight_layout()
        return fig

    def cost_figure(self):
        title = f"{self.label or 'class models'}: cost C = logits[target] against step"
        if self.params.get("blur_every"):
            title += f"\n(saw-tooth: the blur every {self.params['blur_every']} steps lowers C, the ascent wins it back)"
        return _cost_figure(self.cost, self.prob, self.targets, title)


def synthesize(model, targets: Iterable[int] = range(N_CLASSES), steps: int = STEPS,
               step_size: float = SYNTH_STEP_SIZE, sigma: float = SIGMA, seed: int = 0, clip: bool = False,
               l2: float = 0.0, blur_every: int = 0, blur_sigma: float = BLUR_SIGMA, jitter: int = 0,
               label: str = "") -> SynthesisResult:
    """Class models from noise: maximize C = logits[target] by X ← X + step_size · dC/dX.

    Units (0–255 pixel scale): X starts at 128 + sigma·N(0, 1) (`sigma` grey levels, default 32;
    the same seeded noise for every target); the network is fed X / 255; `step_size` multiplies
    dC/dX where X is in grey levels (default 1000); `steps` default 200. Off by default, the
    regularizers (see REGULARIZED): `clip` X to [0, 255] after every step; `l2`: X ← (1 − l2)·X
    after every step (decay toward black, i.e. ascent on C − l2/(2·step_size)·‖X‖²);
    `blur_every` k steps a Gaussian blur of `blur_sigma` pixels; `jitter` j: each step's gradient
    is taken at X shifted by a random (dx, dy) in [−j, j]² (seeded).
    """
    targets = _check_targets(targets)
    steps = _check_int("steps", steps, 1)
    step_size = _check_number("step_size", step_size, 0.0, lo_open=True)
    sigma = _check_number("sigma", sigma, 0.0)
    l2 = _check_number("l2", l2, 0.0)
    if l2 >= 1:
        raise ConfigError(f"l2 is a decay per step and must be < 1; got {l2:g}")
    blur_every = _check_int("blur_every", blur_every, 0)
    blur_sigma = _check_number("blur_sigma", blur_sigma, 0.0)
    jitter = _check_int("jitter", jitter, 0)
    if jitter > 8:
        raise ConfigError(f"jitter is a shift in pixels and must be ≤ 8; got {jitter}")
    seed = _check_int("seed", seed, 0)
    x0 = initial_noise(len(targets), sigma, seed)
    t0 = time.perf_counter()
    tr = _ascend(model, x0, targets, steps=steps, step_size=step_size, clip=bool(clip), l2=l2,
                 blur_every=blur_every, blur_sigma=blur_sigma, jitter=jitter, seed=seed)
    seconds = time.perf_counter() - t0
    params = dict(steps=steps, step_size=step_size, sigma=sigma, seed=seed, clip=bool(clip), l2=l2,
                  blur_every=blur_every, blur_sigma=blur_sigma, jitter=jitter,
                  scale="0-255 (network fed X/255)")
    return SynthesisResult(tr.images.numpy(), x0.numpy(), np.array(targets, dtype=np.int64), tr.cost,
                           tr.prob, tr.pred, tr.logit, params, seconds, label)


def synthesize_regularized(model, targets: Iterable[int] = range(N_CLASSES), **kwargs) -> SynthesisResult:
    """`synthesize` with the REGULARIZED preset (clip, L2 decay, blur, jitter); kwargs override."""
    return synthesize(model, targets, **{**REGULARIZED, "label": "regularized class models", **kwargs})


# ---------------------------------------------------------------------------------------------
# Targeted fakes (§3.2)
# ---------------------------------------------------------------------------------------------

def as_image_255(image, scale: str = "auto") -> torch.Tensor:
    """A 28×28 image as float32 on the 0–255 scale.

    `scale`: "255" (values in 0–255), "01" (values in [0, 1]) or "auto": uint8 arrays, and float
    arrays with any value > 1, are taken as 0–255; other float arrays as [0, 1].
    """
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if t.numel() != 784:
        raise ConfigError(f"the source image must have 28×28 = 784 pixels; got shape {tuple(t.shape)}")
    is_int = not t.is_floating_point()
    t = t.reshape(28, 28).double()
    if not torch.isfinite(t).all():
        raise ConfigError("the source image holds NaN or infinite pixels")
    if scale not in ("auto", "01", "255"):
        raise ConfigError(f"scale must be 'auto', '01' or '255'; got {scale!r}")
    if scale == "auto":
        scale = "255" if is_int or float(t.max()) > 1.0 else "01"
    t = t * 255.0 if scale == "01" else t
    if float(t.min()) < 0 or float(t.max()) > 255:
        raise ConfigError(f"source pixels must lie in [0, 255] (or [0, 1]); got {float(t.min()):g}..{float(t.max()):g}")
    return t.float()


@dataclass
class AdversarialResult:
    """Targeted fakes of one source image: `images` [T, 28, 28] (0–255), `source` [28, 28]
    (0–255), per step [steps+1, T]: `cost`, `prob`, `pred`, `logit`, `mse` (grey levels²)."""
    images: np.ndarray
    initial: np.ndarray
    source: np.ndarray
    source_label: int | None
    targets: np.ndarray
    beta: float
    cost: np.ndarray
    prob: np.ndarray
    pred: np.ndarray
    logit: np.ndarray
    mse_history: np.ndarray
    params: dict
    seconds: float = 0.0

    @property
    def mse(self) -> np.ndarray:
        """Final MSE to the source, [T], grey levels² (0–255 scale)."""
        return self.mse_history[-1]

    @property
    def final_prob(self) -> np.ndarray:
        return self.prob[-1]

    @property
    def final_pred(self) -> np.ndarray:
        return self.pred[-1]

    @property
    def corr_to_source(self) -> np.ndarray:
        return _pearson(self.images.reshape(len(self.targets), -1), self.source.reshape(1, -1))[:, 0]

    def summary(self) -> dict:
        fooled = self.final_pred == self.targets
        others = self.targets != self.source_label if self.source_label is not None else np.ones_like(fooled)
        return {"n_predicted_as_target": int(fooled.sum()),
                "all_predicted_as_target": bool(fooled.all()),
                "fooling_rate_other_classes": float(fooled[others].mean()) if others.any() else float("nan"),
                "min_target_prob": float(self.final_prob.min()),
                "mean_target_prob": float(self.final_prob.mean()),
                "mean_mse_to_source": float(self.mse.mean()),
                "max_mse_to_source": float(self.mse.max()),
                "mean_rmse_to_source": float(np.sqrt(self.mse).mean()),
                "min_corr_to_source": float(self.corr_to_source.min()),
                "mean_corr_to_source": float(self.corr_to_source.mean())}

    def to_dict(self) -> dict:
        return {"params": self.params, "beta": self.beta, "seconds": round(self.seconds, 3),
                "source_label": self.source_label, "targets": self.targets.tolist(),
                "final_target_prob": self.final_prob.tolist(), "final_pred": self.final_pred.tolist(),
                "mse_to_source": self.mse.tolist(), "corr_to_source": self.corr_to_source.tolist(),
                "final_cost": self.cost[-1].tolist(), **self.summary()}

    def save_npz(self, path) -> Path:
        """`images` [T, 28, 28] 0–255, `targets` [T], `source` [28, 28] 0–255, `cost`, `prob`
        [steps+1, T], `beta` (plus `pred`, `mse` [steps+1, T], `initial`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, images=self.images.astype(np.float32), targets=self.targets,
                            source=self.source.astype(np.float32), cost=self.cost.astype(np.float32),
                            prob=self.prob.astype(np.float32), beta=np.float64(self.beta),
                            pred=self.pred, mse=self.mse_history.astype(np.float32),
                            initial=self.initial.astype(np.float32))
        return path

    def figure(self, likeness: dict | None = None):
        """Source, then one fake per target: target, prediction (confidence), MSE to the source
        and, with `likeness` from `digit_likeness`, which digit it looks like: the label of the
        most correlated training image (`nn_label`)."""
        import matplotlib.pyplot as plt
        T = len(self.targets)
        fig, axes = plt.subplots(1, T + 1, figsize=(1.45 * (T + 1), 2.35), squeeze=False)
        axes = axes[0]
        axes[0].imshow(self.source, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        lab = f" (a {self.source_label})" if self.source_label is not None else ""
        axes[0].set_title(f"source{lab}", fontsize=8, fontweight="bold")
        for sp in axes[0].spines.values():
            sp.set_visible(True)
            sp.set_color("tab:blue")
            sp.set_linewidth(2)
        for i, ax in enumerate(axes[1:]):
            t, p, c = int(self.targets[i]), int(self.final_pred[i]), float(self.final_prob[i])
            ax.imshow(np.clip(self.images[i], 0, 255), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            title = f"target {t}\npred {p} ({_pct(c)})\nMSE {self.mse[i]:.0f}"
            if likeness is not None:
                title += f"\nlooks like {likeness['images']['nn_label'][i]}"
            ax.set_title(title, fontsize=8, color="tab:green" if p == t else "tab:red")
        for ax in axes:
            ax.set_xticks([]), ax.set_yticks([])
        s = self.summary()
        fig.suptitle(f"targeted fakes: C = logits[target] − β·MSE(X, source), β = {self.beta:g}, "
                     f"{self.params['steps']} steps from {self.params['init']} — "
                     f"{s['n_predicted_as_target']}/{T} fooled, mean RMSE to source "
                     f"{s['mean_rmse_to_source']:.0f} grey levels", fontsize=9)
        fig.tight_layout()
        return fig

    def cost_figure(self):
        return _cost_figure(self.cost, self.prob, self.targets,
                            f"targeted fakes (β = {self.beta:g}): cost C = logits[target] − β·MSE against step")


def adversarial(model, source_image, targets: Iterable[int] = range(N_CLASSES), beta: float = BETA,
                steps: int = STEPS, step_size: float = STEP_SIZE, init: str = "noise",
                sigma: float = SIGMA, seed: int = 0, clip: bool = False, source_label: int | None = None,
                scale: str = "auto") -> AdversarialResult:
    """Targeted fakes: maximize C = logits[target] − β·MSE(X, source) by X ← X + step_size · dC/dX.

    `source_image`: 28×28 (any shape with 784 pixels), uint8 or float; `scale` says whether it is
    on 0–255 or [0, 1] ("auto": uint8 or max > 1 means 0–255). Everything else is on the 0–255
    scale: MSE is the mean over pixels of (X − source)² in grey levels² (so β·MSE is in logit
    units; default β = 0.003), `step_size` default 1000, `steps` default 200. `init`: "noise" starts
    from 128 + sigma·N(0, 1) as §3.1 (the assignment's choice), "source" starts from the source
    itself. `clip`: keep X in [0, 255] after every step (off by default, as in the assignment).
    """
    targets = _check_targets(targets)
    beta = _check_number("beta", beta, 0.0)
    steps = _check_int("steps", steps, 1)
    step_size = _check_number("step_size", step_size, 0.0, lo_open=True)
    sigma = _check_number("sigma", sigma, 0.0)
    seed = _check_int("seed", seed, 0)
    if init not in ("noise", "source"):
        raise ConfigError(f"init must be 'noise' or 'source'; got {init!r}")
    if source_label is not None and not 0 <= int(source_label) < N_CLASSES:
        raise ConfigError(f"source_label {source_label} is out of range 0..9")
    # The MSE term pulls each pixel toward the source with rate step_size·β·2/784 per step; above
    # 2 the pull overshoots and diverges.
    if step_size * beta * 2 / 784 >= 1.0:
        raise ConfigError(f"step_size·β = {step_size * beta:g} is too large: the MSE term would "
                          f"overshoot (need step_size·β < 392; lower --beta or --step-size)")
    src = as_image_255(source_image, scale)
    T = len(targets)
    x0 = initial_noise(T, sigma, seed) if init == "noise" else src.expand(T, 28, 28).clone()
    t0 = time.perf_counter()
    tr = _ascend(model, x0, targets, steps=steps, step_size=step_size, source=src, beta=beta,
                 clip=bool(clip), seed=seed)
    seconds = time.perf_counter() - t0
    params = dict(steps=steps, step_size=step_size, beta=beta, init=init, sigma=sigma, seed=seed,
                  clip=bool(clip), scale="0-255 (network fed X/255; MSE in grey levels²)")
    return AdversarialResult(tr.images.numpy(), x0.numpy(), src.numpy(),
                             None if source_label is None else int(source_label),
                             np.array(targets, dtype=np.int64), beta, tr.cost, tr.prob, tr.pred,
                             tr.logit, tr.mse, params, seconds)


BETAS = (0.0, 0.001, 0.003, 0.01, 0.03)   # step_size·β must stay below 392 (see adversarial)


@dataclass
class BetaSweepResult:
    """One `adversarial` run per β (same noise, same targets)."""
    betas: list[float]
    results: list[AdversarialResult]

    def to_dict(self) -> dict:
        rows = []
        for b, r in zip(self.betas, self.results):
            s = r.summary()
            rows.append({"beta": b, "fooling_rate_other_classes": s["fooling_rate_other_classes"],
                         "n_predicted_as_target": s["n_predicted_as_target"],
                         "mean_target_prob": s["mean_target_prob"],
                         "mean_mse_to_source": s["mean_mse_to_source"],
                         "mean_corr_to_source": s["mean_corr_to_source"],
                         "min_corr_to_source": s["min_corr_to_source"]})
        return {"targets": self.results[0].targets.tolist(), "source_label": self.results[0].source_label,
                "params": {k: v for k, v in self.results[0].params.items() if k != "beta"}, "rows": rows}

    def figure(self):
        """Left: fooling rate and resemblance (correlation with the source) against β. Right: the
        fakes, one row per β, one column per target."""
        import matplotlib.pyplot as plt
        d = self.to_dict()["rows"]
        T = len(self.results[0].targets)
        nb = len(self.betas)
        fig = plt.figure(figsize=(5.2 + 0.95 * (T + 1), max(3.8, 0.95 * nb + 1.0)))
        outer = fig.add_gridspec(1, 2, width_ratios=[4.0, 0.95 * (T + 1)], wspace=0.22)
        ax = fig.add_subplot(outer[0, 0])
        gs = outer[0, 1].subgridspec(nb, T + 1, wspace=0.08, hspace=0.12)
        xb = np.arange(nb)
        ax.plot(xb, [100 * r["fooling_rate_other_classes"] for r in d], "o-", color="tab:red",
                label="fooled: pred = target (%)")
        ax.plot(xb, [100 * r["mean_corr_to_source"] for r in d], "s-", color="tab:blue",
                label="looks like source: 100·corr")
        ax.plot(xb, [100 * r["mean_target_prob"] for r in d], "^--", color="tab:red", alpha=0.5, ms=4,
                label="mean target prob (%)")
        ax.set_xticks(xb, [f"{b:g}" for b in self.betas], rotation=45)
        ax.set(xlabel="β (MSE in grey levels²)", ylim=(-5, 105),
               title="fooling vs resemblance")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
        r0 = self.results[0]
        for i, (b, r) in enumerate(zip(self.betas, self.results)):
            a = fig.add_subplot(gs[i, 0])
            a.imshow(r.source, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            a.set_xticks([]), a.set_yticks([])
            a.set_ylabel(f"β={b:g}", fontsize=8, rotation=0, ha="right", va="center")
            if i == 0:
                a.set_title("source", fontsize=8)
            for j in range(T):
                a = fig.add_subplot(gs[i, j + 1])
                a.imshow(np.clip(r.images[j], 0, 255), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                a.set_xticks([]), a.set_yticks([])
                ok = r.final_pred[j] == r.targets[j]
                for sp in a.spines.values():
                    sp.set_visible(True)
                    sp.set_color("tab:green" if ok else "tab:red")
                    sp.set_linewidth(1.5)
                if i == 0:
                    a.set_title(f"→ {int(r0.targets[j])}", fontsize=8)
        fig.suptitle(f"β sweep: C = logits[target] − β·MSE(X, source); frame green = classified as target",
                     fontsize=9)
        return fig


def beta_sweep(model, source_image, betas: Sequence[float] = BETAS, targets: Iterable[int] = range(N_CLASSES),
               **kwargs) -> BetaSweepResult:
    """`adversarial` for each β in `betas` (other kwargs as for `adversarial`)."""
    betas = [_check_number("beta", b, 0.0) for b in betas]
    if not betas:
        raise ConfigError("betas is empty")
    targets = _check_targets(targets)
    return BetaSweepResult(betas, [adversarial(model, source_image, targets, beta=b, **kwargs) for b in betas])


# ---------------------------------------------------------------------------------------------
# Does it look like a digit?
# ---------------------------------------------------------------------------------------------

def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of a [n, d] with every row of b [m, d] → [n, m].
    A constant row has correlation 0 with everything."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    a = np.divide(a, na, out=np.zeros_like(a), where=na > 0)
    b = np.divide(b, nb, out=np.zeros_like(b), where=nb > 0)
    return a @ b.T


def class_means(split) -> np.ndarray:
    """[10, 28, 28] mean training image of each class, 0–255 scale."""
    x = split.train_x.reshape(len(split.train_x), -1).double()
    y = split.train_y
    return np.stack([x[y == c].mean(0).numpy() for c in range(N_CLASSES)]).reshape(N_CLASSES, 28, 28)


def _pixel_stats(x: np.ndarray) -> dict:
    """Per-image pixel statistics on the 0–255 scale (x: [n, 784])."""
    return {"mean": x.mean(1), "background_fraction": (x < 32).mean(1),
            "ink_fraction": (x >= 128).mean(1), "outside_0_255_fraction": ((x < 0) | (x > 255)).mean(1)}


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (float32), so a dot product is a Pearson r."""
    a = np.asarray(a, dtype=np.float32)
    a = a - a.mean(1, keepdims=True)
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return np.divide(a, n, out=np.zeros_like(a), where=n > 0)


def _nearest_train(x: np.ndarray, train: np.ndarray, train_y: np.ndarray, chunk: int = 10000):
    """Label and correlation of the most correlated training image for every row of x
    (float32 matrix products over chunks of the training set)."""
    best = np.full(len(x), -2.0)
    lab = np.zeros(len(x), dtype=np.int64)
    xu = _unit_rows(x)
    for i in range(0, len(train), chunk):
        r = xu @ _unit_rows(train[i:i + chunk]).T
        j = r.argmax(1)
        v = r[np.arange(len(x)), j]
        better = v > best
        best[better] = v[better]
        lab[better] = train_y[i + j[better]]
    return lab, best


@torch.inference_mode()
def _transfer(models: Mapping[str, torch.nn.Module], images: np.ndarray, targets) -> dict:
    out = {}
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).reshape(-1, 1, 28, 28) / 255.0
    for name, m in models.items():
        was = m.training
        m.eval()
        probs = m(x.to(_device(m))).double().softmax(1).cpu().numpy()
        m.train(was)
        pred = probs.argmax(1)
        entry = {"pred": pred.tolist(), "confidence": probs.max(1).tolist()}
        if targets is not None:
            t = np.asarray(targets)
            entry["target_prob"] = probs[np.arange(len(t)), t].tolist()
            entry["agree_rate"] = float((pred == t).mean())
        out[name] = entry
    return out


def digit_likeness(images, split, models: Mapping[str, torch.nn.Module] | None = None, targets=None,
                   n_real: int = 500, seed: int = 0, means: np.ndarray | None = None) -> dict:
    """How much do `images` ([n, 28, 28], 0–255 scale) look like real digits? Numbers only.

    Measures (each image as 784 numbers; Pearson correlation r is blind to brightness and
    contrast, so a grey image is not penalized for being grey, only for its shape):
      - corr_class_mean [n, 10]: r with each class's mean training image; `nearest_class` is the
        class of the most correlated mean (a nearest-centroid classifier; on real test digits it
        is right `reference.nearest_class_accuracy` of the time), `corr_target_mean` the r with
        the target's mean, `real_percentile` where that r falls among real test digits of the
        same class (their r with their own class mean): 50 = as digit-like as a median real digit.
      - nn_label / nn_corr: the label and r of the most correlated single training image.
      - pixel statistics: mean grey level, fraction of background (< 32) and ink (≥ 128) pixels
        and of pixels outside [0, 255].
      - reference: the same numbers for `n_real` seeded random test digits.
      - transfer (with `models`, name → Net): each model's prediction for the images (fed X/255
        exactly as the generating network saw them), confidence, and with `targets` the
        probability of the target and the fraction predicted as the target.
    """
    x = np.asarray(images, dtype=np.float64).reshape(-1, 784)
    if not np.isfinite(x).all():
        raise ConfigError("images hold NaN or infinite values")
    means = class_means(split) if means is None else np.asarray(means)
    mflat = means.reshape(N_CLASSES, -1)
    train = split.train_x.reshape(len(split.train_x), -1).numpy().astype(np.float32)
    train_y = split.train_y.numpy()

    # Reference: real test digits.
    g = np.random.default_rng(seed)
    idx = np.sort(g.choice(len(split.test_x), size=min(n_real, len(split.test_x)), replace=False))
    real = split.test_x[idx].reshape(len(idx), -1).numpy().astype(np.float64)
    real_y = split.test_y[idx].numpy()
    r_real = _pearson(real, mflat)
    own_real = r_real[np.arange(len(idx)), real_y]
    nn_lab_real, nn_r_real = _nearest_train(real, train, train_y)
    ps_real = _pixel_stats(real)
    reference = {"n": int(len(idx)), "seed": seed,
                 "nearest_class_accuracy": float((r_real.argmax(1) == real_y).mean()),
                 "corr_own_mean_mean": float(own_real.mean()),
                 "corr_own_mean_p05": float(np.percentile(own_real, 5)),
                 "corr_own_mean_p50": float(np.percentile(own_real, 50)),
                 "nn_corr_mean": float(nn_r_real.mean()),
                 "nn_corr_p05": float(np.percentile(nn_r_real, 5)),
                 "nn_label_accuracy": float((nn_lab_real == real_y).mean()),
                 **{f"{k}_mean": float(v.mean()) for k, v in ps_real.items()}}

    r = _pearson(x, mflat)
    nearest = r.argmax(1)
    nn_lab, nn_r = _nearest_train(x, train, train_y)
    ps = _pixel_stats(x)
    per = {"corr_class_mean": r.round(4).tolist(), "nearest_class": nearest.tolist(),
           "nearest_class_corr": r.max(1).tolist(), "nn_label": nn_lab.tolist(), "nn_corr": nn_r.tolist(),
           **{k: v.tolist() for k, v in ps.items()}}
    summary = {"nearest_class_corr_mean": float(r.max(1).mean()), "nn_corr_mean": float(nn_r.mean()),
               **{f"{k}_mean": float(v.mean()) for k, v in ps.items()}}
    if targets is not None:
        t = np.asarray(_check_targets(targets))
        if len(t) != len(x):
            raise ConfigError(f"{len(t)} targets for {len(x)} images")
        own = r[np.arange(len(t)), t]
        pct = [float((own_real[real_y == c] <= v).mean() * 100) if (real_y == c).any() else float("nan")
               for c, v in zip(t, own)]
        per.update(corr_target_mean=own.tolist(), real_percentile=pct)
        summary.update(corr_target_mean_mean=float(own.mean()),
                       nearest_is_target_rate=float((nearest == t).mean()),
                       nn_label_is_target_rate=float((nn_lab == t).mean()),
                       real_percentile_median=float(np.median(pct)))
    out = {"measure": "Pearson correlation over the 784 pixels (0-255 scale)",
           "images": per, "summary": summary, "reference_real_test_digits": reference}
    if models:
        tr = _transfer(models, x.reshape(-1, 28, 28), targets)
        out["transfer"] = tr
        if targets is not None:
            summary["transfer_agree_rate"] = {k: v["agree_rate"] for k, v in tr.items()}
    return out


def likeness_figure(rows: Sequence[tuple[str, np.ndarray, dict | None]], means: np.ndarray, title: str = ""):
    """Rows of images (label, [10, 28, 28] 0–255, likeness dict or None) under the class-mean
    training images, each titled with r (correlation with its class's mean) and the nearest class."""
    import matplotlib.pyplot as plt
    allrows = [("class-mean training images", means, None)] + list(rows)
    n = len(allrows)
    fig, axes = plt.subplots(n, N_CLASSES, figsize=(1.3 * N_CLASSES, 1.62 * n + 0.3), squeeze=False)
    for i, (label, ims, lk) in enumerate(allrows):
        for c in range(N_CLASSES):
            ax = axes[i, c]
            ax.imshow(np.clip(ims[c], 0, 255), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if lk is not None:
                rr = lk["images"]["corr_target_mean"][c]
                nc = lk["images"]["nearest_class"][c]
                ax.set_title(f"r={rr:+.2f} → {nc}", fontsize=8, color="tab:green" if nc == c else "tab:red")
            elif i == 0:
                ax.set_title(f"class {c}", fontsize=8)
        lab = label
        if lk is not None:
            s = lk["summary"]
            lab += f"\nmean r {s['corr_target_mean_mean']:+.2f}\nlooks like\ntarget {s['nearest_is_target_rate'] * 100:.0f}%"
        axes[i, 0].set_ylabel(lab, fontsize=8, rotation=0, ha="right", va="center", labelpad=8)
    ref = next((lk for _, _, lk in rows if lk is not None), None)
    if ref is not None:
        rr = ref["reference_real_test_digits"]
        title = (title + "\n" if title else "") + (
            f"r = correlation with the class-mean image (real test digits: mean {rr['corr_own_mean_mean']:.2f}, "
            f"5th percentile {rr['corr_own_mean_p05']:.2f}); → nearest class by r (green = the target)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Shared figure bits
# ---------------------------------------------------------------------------------------------

def _pct(p: float) -> str:
    """A probability as a percentage that never rounds 0.9995 up to a misleading 100%."""
    if p >= 0.9995:
        return f"{p * 100:.2f}%" if p < 0.99995 else ">99.99%"
    return f"{p * 100:.1f}%" if p >= 0.1 else f"{p * 100:.2g}%"


def _cost_figure(cost: np.ndarray, prob: np.ndarray, targets: np.ndarray, title: str):
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    steps = np.arange(len(cost))
    cmap = plt.get_cmap("tab10")
    for i, t in enumerate(targets):
        a.plot(steps, cost[:, i], color=cmap(int(t) % 10), lw=1.4, label=str(int(t)))
        b.plot(steps, prob[:, i], color=cmap(int(t) % 10), lw=1.4)
    a.set(xlabel="step", ylabel="C", title=title)
    a.legend(title="target", fontsize=7, ncol=2, loc="lower right")
    b.set(xlabel="step", ylabel="softmax probability of the target", title="confidence in the target",
          ylim=(-0.02, 1.02))
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
