"""Class models a person can read (question 3.1.3): gradient ascent kept among natural images.

The assignment's class model (§3.1, `class_models.synthesize`) climbs C = logits[target] from
noise with nothing asking X to be a natural image, so it climbs along the steepest, high-frequency,
out-of-range directions: the network (and even another network, Ilyas et al. 2019) reads the
result as the target, but no person would. This module answers "can you think of some reason?"
by showing the contrast: the same network, the same objective, with an image prior that knows
only what handwritten digits look like in general (no labels) draws readable digits.

Method (`synthesize_natural`): a linear "generator" learned from the training images, the simplest
form of Nguyen et al. 2016's learned prior: the top K = 30 principal components of (every 5th)
training image, labels never read, and a Gaussian on them (Simonyan et al. 2014 and Mahendran &
Vedaldi 2015 use a fixed L2 / TV prior in pixels; this one is the training images' own covariance):

    X(w) = clip(mean + Σ_i w_i·s_i·u_i, 0, 255)      w: whitened coefficients, s_i: std along u_i
    C(w) = logits[target](X(w)) − λ·½‖w‖²              λ = PRIOR_WEIGHT = 0.3 (logits per unit ½‖w‖²)
    Adam on w, 200 steps, lr 0.1; w_0 = the projection of the assignment's seeded noise (128 ± 32)
    second half: every 10 steps, an image whose maker probability is < MIN_PROB = 0.93 gets its own
    λ multiplied by 0.7 (the weakest prior the maker still believes; judges are never consulted)

½‖w‖² is −log of the Gaussian prior (real test digits have ‖w‖ ≈ √K), so C is a log-posterior: "the
network says target, and the image is a likely digit image". Only w is given to the optimizer and
the network is frozen (`_shared.frozen`): the weights never change. The loop is `ascent.ascend`,
the one the plain class models run, with `ascent.PcaCoefficients` in place of pixels.

Why this prior and the adaptive λ: a fixed λ trades the two goals against each other (a smaller λ
lets the maker's probability rise and the image drift off the digit manifold, a larger one the
reverse); weakening the prior only for the images the maker still doubts meets both. The
candidates tried (pixel-space TV and distance priors, PCA-30/40/50, fixed and adaptive λ) and their
readability are in BENCHMARKS.md, § "3.1.3: the candidates tried".
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..config import SIGMA
from ..errors import ConfigError
from ..model import N_CLASSES
from ..output import as_output_dir
from ._shared import IMAGE_SIZE, AnalysisResult, ascent_grid, check_int, check_number, check_targets, cost_figure, pct
from .ascent import PcaCoefficients, ascend, initial_noise
from .class_models import SynthesisResult
from .likeness import LikenessResult
from .verdict import Verdict

if TYPE_CHECKING:
    import numpy.typing as npt
    from matplotlib.figure import Figure
    from torch import nn

    from ..data import Split
    from ..output import OutputDir

COMPONENTS = 30        # principal components kept (30, 40, 50, 100 measured: docstring table)
PRIOR_WEIGHT = 0.3     # λ on ½‖w‖² (w whitened, so ½‖w‖² ≈ K/2 = 15 for a real digit), in logits; strong
                       # enough for a network trained without label smoothing, whose logits keep rising
                       # off the digit images (BENCHMARKS.md, § 3.1.3: the prior's weight)
MIN_PROB = 0.93        # in the second half, an image whose maker probability is below this ...
ADAPT_EVERY = 10       # ... checked every 10 steps ...
ADAPT_FACTOR = 0.7     # ... has its own λ multiplied by 0.7 (a weaker prior only where needed)
STEPS = 200            # Adam steps; C had converged by 150 (300 gave the same images)
LR = 0.1               # Adam learning rate on the whitened coefficients (units of one std)
PRIOR_STRIDE = 5       # the prior is fitted on every 5th training image (10 000 of 50 000)
N_REAL = 1000          # real test digits for the judges' reference distance
PERCENTILE = 95.0      # a readable image is no farther from its nearest training image than this
                       # percentile of real test digits' nearest-training distance
READABLE_SHARE = 0.8   # a set of images is "readable" when at least 80% of them pass both judges (8 of 10):
                       # real test digits themselves pass only ≈ 89–92% (95% are within the distance and the
                       # nearest training image has their label for ≈ 97%; 89/100 measured with a 1-epoch
                       # judge), so a bar of 9 of 10 would call one sample of ten real digits in four "partly
                       # readable" (binomial, p = 0.9); 8 of 10 calls ≈ 93% of such samples readable
UNREADABLE_SHARE = 0.2  # ... and "not readable" when at most 20% do (2 of 10; plain class models: 0/10)
MAKER_SURE = 0.9       # a readable row shows the reason only if the maker still gives every image p ≥ 0.9


# ---------------------------------------------------------------------------------------------
# The prior: a Gaussian on the top principal components of the training images
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PcaPrior:
    """mean [784] and basis [K, 784] (orthonormal rows) on the 0–255 scale; scale [K]: std of the
    training images along each basis vector (grey levels); explained: fraction of the variance."""
    mean: np.ndarray
    basis: np.ndarray
    scale: np.ndarray
    explained: float
    n_images: int

    @classmethod
    def fit(cls, split: Split, components: int = COMPONENTS, stride: int = PRIOR_STRIDE) -> PcaPrior:
        """Principal components of every `stride`-th training image (labels are never read)."""
        components = check_int("components", components, 1)
        stride = check_int("stride", stride, 1)
        if components > 784:
            raise ConfigError(f"components must be ≤ 784 (28×28 pixels); got {components}")
        x = split.train_x[::stride].reshape(-1, 784).double()
        if len(x) <= components:
            raise ConfigError(f"the prior needs more than {components} training images; got {len(x)}")
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / (len(x) - 1)
        evals, evecs = torch.linalg.eigh(cov)                  # ascending
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        keep = evals[:components]
        return cls(mean.numpy(), evecs[:, :components].T.contiguous().numpy(), keep.sqrt().numpy(),
                   float(keep.sum() / evals.sum()), int(len(x)))

    @property
    def components(self) -> int:
        return len(self.scale)

    def encode(self, images: npt.ArrayLike) -> np.ndarray:
        """Whitened coefficients w [n, K] of images [n, 28, 28] (0–255)."""
        x = np.asarray(images, dtype=np.float64).reshape(-1, 784)
        return (x - self.mean) @ self.basis.T / self.scale

    def decode(self, w: npt.ArrayLike) -> np.ndarray:
        """Images [n, 28, 28] (0–255, not clipped) of whitened coefficients w [n, K]."""
        return (self.mean + (np.asarray(w) * self.scale) @ self.basis).reshape(-1, 28, 28)


# ---------------------------------------------------------------------------------------------
# Class models under the prior
# ---------------------------------------------------------------------------------------------

class NaturalSynthesisResult(SynthesisResult):
    """`SynthesisResult` of `synthesize_natural`: `cost` is C = logit − λ·½‖w‖² per step, `prob`,
    `pred`, `logit` are measured on the clipped image X(w) the network was fed."""

    def figure(self, likeness: LikenessResult | None = None) -> Figure:
        """The start and the class models with target, prediction and confidence (green:
        predicted as the target); with `likeness` (`digit_likeness`), r with the class mean."""
        from ..figures import wrap_text
        T = len(self.targets)
        fig, axes = ascent_grid(T, title_lines=3 if likeness is not None else 2, suptitle_lines=3)
        axes[0].imshow(self.initial[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[0].set_title(f"start: noise\n128 ± {self.params['sigma']:g},\non the prior", fontsize=8)
        self.draw_targets(axes, self.images, [f"\nr = {likeness.per_image['corr_target_mean'][i]:+.2f}"
                                              if likeness is not None else "" for i in range(T)])
        prm = self.params
        fig.suptitle(wrap_text(f"{self.label}: X = clip(mean + PCA-{prm['components']}·w), Adam on w, "
                               f"C = logits[target] − {prm['prior_weight']:g}·½‖w‖², {prm['steps']} steps — "
                               f"{int((self.final_pred == self.targets).sum())}/{T} predicted as target, "
                               f"min confidence {pct(float(self.final_prob.min()))}", fontsize=9), fontsize=9)
        return fig

    def cost_figure(self) -> Figure:
        return cost_figure(self.cost, self.prob, self.targets,
                            f"{self.label}: C = logits[target] − λ·½‖w‖² against step")


def synthesize_natural(model: nn.Module, targets: Iterable[int] = range(N_CLASSES), *, split: Split | None = None,
                       prior: PcaPrior | None = None, seed: int = 0, steps: int = STEPS, lr: float = LR,
                       prior_weight: float = PRIOR_WEIGHT, components: int = COMPONENTS,
                       sigma: float = SIGMA, min_prob: float | None = MIN_PROB,
                       label: str = "natural class models") -> NaturalSynthesisResult:
    """Class models a person can read: ascent of logits[target] − λ·½‖w‖² on PCA coefficients w.

    Give the prior's source: `split` (the run's split; the prior is fitted on its training images,
    `components` of them) or a fitted `prior`. The start is the assignment's seeded noise
    (128 + `sigma`·N(0, 1), grey levels; the same for every target) projected onto the prior.
    Returns images on 0–255 (clipped: they are what the network was fed), the cost trace, and the
    maker's probability/prediction per step. The weights never change.
    """
    targets = check_targets(targets)
    if (split is None) == (prior is None):
        raise ConfigError("synthesize_natural needs exactly one of split= (the run's data, to fit the "
                          "prior) or prior= (a fitted PcaPrior)")
    steps = check_int("steps", steps, 1)
    lr = check_number("lr", lr, 0.0, lo_open=True)
    prior_weight = check_number("prior_weight", prior_weight, 0.0)
    sigma = check_number("sigma", sigma, 0.0)
    seed = check_int("seed", seed, 0)
    if min_prob is not None:
        min_prob = check_number("min_prob", min_prob, 0.0)
        if min_prob >= 1:
            raise ConfigError(f"min_prob is a probability and must be < 1; got {min_prob:g}")
    t_fit = time.perf_counter()
    if prior is None:
        prior = PcaPrior.fit(split, components)  # type: ignore[arg-type]  # split is given when prior is not (checked above)
    elif not isinstance(prior, PcaPrior):
        raise ConfigError(f"prior must be a PcaPrior (PcaPrior.fit(split)); got {type(prior).__name__}")
    fit_seconds = time.perf_counter() - t_fit

    T = len(targets)
    noise = initial_noise(T, sigma, seed).reshape(T, 784).double().numpy()
    param = PcaCoefficients(prior.encode(noise), prior.mean, prior.scale[:, None] * prior.basis, lr=lr,
                            prior_weight=prior_weight, min_prob=min_prob, adapt_every=ADAPT_EVERY,
                            adapt_factor=ADAPT_FACTOR)
    t0 = time.perf_counter()
    tr = ascend(model, targets, param, steps=steps)
    seconds = time.perf_counter() - t0
    params = dict(method="PCA Gaussian prior", components=prior.components, prior_weight=prior_weight,
                  min_prob=min_prob, final_prior_weight=[round(float(v), 5) for v in param.lam.cpu()],
                  steps=steps, lr=lr, optimizer="Adam", sigma=sigma, seed=seed,
                  prior_images=prior.n_images, prior_explained_variance=round(prior.explained, 4),
                  prior_fit_seconds=round(fit_seconds, 3), scale="0-255 (network fed X/255)")
    return NaturalSynthesisResult(tr.images.numpy().astype(np.float64), tr.initial.numpy().astype(np.float64),
                                  np.array(targets, dtype=np.int64), tr.cost, tr.prob, tr.pred, tr.logit, params,
                                  seconds, label)


# ---------------------------------------------------------------------------------------------
# Readability: judges that did not make the image
# ---------------------------------------------------------------------------------------------

def _as_images(images, name: str) -> np.ndarray:
    try:
        x = np.asarray(images, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: images must be an array of 28×28 images; got {type(images).__name__}") from None
    if x.size == 0 or x.size % 784:
        raise ConfigError(f"{name}: images must have shape [n, 28, 28]; got {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError(f"{name}: images hold NaN or infinite values")
    return np.clip(x.reshape(-1, 784), 0.0, 255.0)           # as a person sees it


def _nearest_training(x: np.ndarray, train: torch.Tensor, train_sq: torch.Tensor, train_y: np.ndarray,
                      chunk: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """Label and Euclidean distance (grey levels, over the 784 pixels) of the nearest training
    image for every row of x [n, 784]; float64 products over chunks of the training set."""
    xt = torch.as_tensor(x, dtype=torch.float64)
    xsq = (xt ** 2).sum(1, keepdim=True)
    best = torch.full((len(x),), float("inf"), dtype=torch.float64)
    arg = torch.zeros(len(x), dtype=torch.int64)
    for i in range(0, len(train), chunk):
        t = train[i:i + chunk]
        d2 = xsq - 2.0 * xt @ t.T + train_sq[i:i + chunk]
        v, j = d2.min(1)
        better = v < best
        best[better] = v[better]
        arg[better] = j[better] + i
    return train_y[arg.numpy()], best.clamp_min(0).sqrt().numpy()


@dataclass
class JudgedRow:
    """One set of images and the judges' per-image verdicts."""
    name: str
    images: np.ndarray          # [n, 28, 28], clipped to 0–255
    nn_label: np.ndarray        # label of the nearest training image
    nn_distance: np.ndarray     # its Euclidean distance, grey levels
    judge_pred: np.ndarray      # the second network's prediction
    judge_prob: np.ndarray      # its probability of the target
    maker_prob: np.ndarray | None = None   # the generating network's probability of the target

    def verdicts(self, targets: np.ndarray, threshold: float) -> dict:
        near = (self.nn_label == targets) & (self.nn_distance <= threshold)
        named = self.judge_pred == targets
        return {"near_training_digit": near, "named_by_judge": named, "readable": near & named}


@dataclass
class ReadabilityResult(AnalysisResult):
    """Judges' verdicts on rows of images for the same targets. `threshold`: the PERCENTILE-th
    percentile of real test digits' nearest-training distance (grey levels)."""
    stem: ClassVar[str] = "readability"
    targets: np.ndarray
    rows: list[JudgedRow]
    threshold: float
    reference: dict
    judge_name: str = "second network"
    params: dict = field(default_factory=dict)

    def row(self, name: str) -> JudgedRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise ConfigError(f"no row named {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def counts(self, name: str) -> dict:
        r = self.row(name)
        v = r.verdicts(self.targets, self.threshold)
        out: dict[str, int | float] = {k: int(b.sum()) for k, b in v.items()}
        out.update(n=int(len(self.targets)), nn_label_is_target=int((r.nn_label == self.targets).sum()),
                   median_nn_distance=float(np.median(r.nn_distance)))
        if r.maker_prob is not None:
            out.update(maker_min_prob=float(r.maker_prob.min()),
                       maker_prob_ge_0_9=int((r.maker_prob >= 0.9).sum()))
        return out

    def to_dict(self) -> dict:
        rows = {}
        for r in self.rows:
            v = r.verdicts(self.targets, self.threshold)
            rows[r.name] = {"counts": self.counts(r.name),
                            "nn_label": r.nn_label.tolist(), "nn_distance": r.nn_distance.round(1).tolist(),
                            "judge_pred": r.judge_pred.tolist(), "judge_prob": r.judge_prob.round(4).tolist(),
                            **({"maker_prob": r.maker_prob.round(4).tolist()} if r.maker_prob is not None else {}),
                            **{k: b.tolist() for k, b in v.items()}}
        return {"targets": self.targets.tolist(), "threshold_grey_levels": round(self.threshold, 1),
                "judges": {"near_training_digit": f"the nearest training image (Euclidean, 0-255 pixels, images "
                                                  f"clipped to 0-255) has the target's label and lies within "
                                                  f"{self.threshold:.0f} grey levels, the {PERCENTILE:g}th "
                                                  f"percentile of real test digits' nearest-training distance",
                           "named_by_judge": f"{self.judge_name} (trained with another seed) predicts the target",
                           "readable": "both"},
                "reference_real_test_digits": self.reference, "params": self.params, "rows": rows}

    def figure(self) -> Figure:
        """One row of images per set (plain / regularized / natural), each image titled with the
        nearest training label and distance and the judge's prediction (green = passes), and the
        judges' counts at the end of each row."""
        import matplotlib.pyplot as plt

        from ..figures import FIG_WIDTH_IN, wrap_text
        T = len(self.targets)
        n = len(self.rows)
        cell = (FIG_WIDTH_IN - 1.3) / T
        fig, axes = plt.subplots(n, T, figsize=(FIG_WIDTH_IN, n * (cell + 0.5) + 0.9), squeeze=False,
                                 layout="constrained")
        for i, r in enumerate(self.rows):
            v = r.verdicts(self.targets, self.threshold)
            for j in range(T):
                ax = axes[i, j]
                ax.imshow(r.images[j], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                ok = bool(v["readable"][j])
                for sp in ax.spines.values():
                    sp.set_visible(True)
                    sp.set_color("tab:green" if ok else "tab:red")
                    sp.set_linewidth(2.0)
                near = "tab:green" if v["near_training_digit"][j] else "tab:red"
                ax.set_title(f"NN {r.nn_label[j]}\n{r.nn_distance[j]:.0f}", fontsize=7.5, color=near, pad=2)
                ax.set_xlabel(f"judge {r.judge_pred[j]}", fontsize=7.5, labelpad=2,
                              color="tab:green" if v["named_by_judge"][j] else "tab:red")
            c = self.counts(r.name)
            lines = [r.name, f"readable {c['readable']}/{c['n']}", f"near {c['near_training_digit']}/{c['n']}",
                     f"judge {c['named_by_judge']}/{c['n']}"]
            if "maker_min_prob" in c:
                lines.append(f"maker min p\n{c['maker_min_prob']:.3f}")
            axes[i, 0].set_ylabel("\n".join(lines), fontsize=7.5, rotation=0, ha="right", va="center", labelpad=6,
                                  color="tab:green" if c["readable"] >= 0.9 * c["n"] else "black")
        fig.suptitle(wrap_text(
            f"Can a person read the class models? Columns: targets {', '.join(map(str, self.targets))}. Over each "
            f"image: the label of its nearest training image (NN) and their distance in grey levels, green when "
            f"that label is the target and the distance is within {self.threshold:.0f} (95% of real test digits "
            f"are); under it: what {self.judge_name} predicts, green when the target. Frame green = readable (both).",
            fontsize=8.5), fontsize=8.5)
        return fig

    def save(self, directory: str | Path | OutputDir, stem: str | None = None) -> list[Path]:
        """readability.json (with the answer sentence) and readability.png, as every result saves."""
        d = as_output_dir(directory)
        stem = stem or self.stem
        return [d.write_json(f"{stem}.json", {**self.to_dict(), "answer": self.answer_text()}),
                d.save_figure(self.figure(), f"{stem}.png", dpi=110)]

    def answer_text(self) -> str:
        """The answer to 3.1.3 ("do they look like digits, and if not, why?") from the numbers."""
        names = [r.name for r in self.rows]
        c = {k: self.counts(k) for k in names}
        n = len(self.targets)
        ref = self.reference
        out = []
        first = names[0]
        cf = c[first]
        out.append(f"No, not the {first} class models: {cf['readable']} of {n} are readable. Their nearest "
                   f"training image is of the target class for {cf['nn_label_is_target']} of {n}, but lies "
                   f"{cf['median_nn_distance']:.0f} grey levels away (median; real test digits lie within "
                   f"{self.threshold:.0f} of theirs in 95% of cases), so only {cf['near_training_digit']} of {n} "
                   f"are near any real digit of their class. Yet {self.judge_name} names the target for "
                   f"{cf['named_by_judge']} of {n}: being classified as a digit is not looking like one.")
        for k in names[1:]:
            ck = c[k]
            s = (f"The {k} class models: {ck['readable']} of {n} readable ({ck['near_training_digit']} near a "
                 f"training digit of the target, {ck['named_by_judge']} named by {self.judge_name}")
            if "maker_min_prob" in ck:
                s += f"; the generating network's lowest target probability {ck['maker_min_prob']:.3f}"
            out.append(s + ").")
        best = max(names, key=lambda k: c[k]["readable"])
        if best != first and c[best]["readable"] > cf["readable"]:
            out.append(f"The reason: nothing in C = logits[target] asks X to be a natural image. The steepest "
                       f"way up the logit runs through high-frequency patterns and pixel values no digit has, "
                       f"which networks do respond to but people do not see as digits. Keep X among likely "
                       f"digit images (the {best} row) and the same network, with the same objective, draws "
                       f"digits a person can read: it does hold a digit-shaped model of each class; plain "
                       f"gradient ascent simply never needs it.")
        out.append(f"(Reference: {ref['n']} seeded real test digits; their nearest training image has their "
                   f"label for {ref['nn_label_accuracy'] * 100:.1f}%, median distance "
                   f"{ref['nn_distance_p50']:.0f} grey levels.)")
        return " ".join(out)


@torch.inference_mode()
def _probs(model, x: np.ndarray) -> np.ndarray:
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        t = torch.as_tensor(x, dtype=torch.float32, device=dev).reshape(-1, 1, 28, 28) / 255.0
        return model(t).double().softmax(1).cpu().numpy()
    finally:
        model.train(was)


def readability(images: npt.ArrayLike | Mapping[str, npt.ArrayLike], targets: Iterable[int], split: Split,
                judge_model: nn.Module, *, maker: nn.Module | None = None, n_real: int = N_REAL, seed: int = 0,
                judge_name: str = "second network") -> ReadabilityResult:
    """Judge whether images (an array [n, 28, 28] on 0–255, or a mapping row name → array, e.g.
    plain / regularized / natural) can be read as their targets, on the image clipped to 0–255:

      near_training_digit: the nearest training image (Euclidean over the 784 pixels) has the
        target's label AND is no farther than the PERCENTILE-th percentile of the same distance for
        `n_real` seeded real test digits;
      named_by_judge: `judge_model` (a network trained with another seed) predicts the target;
      readable: both. A network alone is no judge (plain class models fool independently trained
      networks too); the distance condition is what a noise-like image cannot meet.
    With `maker` (the generating network), its probability of the target is recorded too.
    """
    rows_in = dict(images) if isinstance(images, Mapping) else {"images": images}
    if not rows_in:
        raise ConfigError("readability needs at least one set of images")
    t = np.asarray(check_targets(targets), dtype=np.int64)
    n_real = check_int("n_real", n_real, 1)
    seed = check_int("seed", seed, 0)
    if judge_model is None or not isinstance(judge_model, torch.nn.Module):
        raise ConfigError("judge_model must be a trained network (e.g. run.load_model() of another seed)")
    xs = {}
    for name, ims in rows_in.items():
        x = _as_images(ims, str(name))
        if len(x) != len(t):
            raise ConfigError(f"{name}: {len(x)} images for {len(t)} targets")
        xs[str(name)] = x

    train = split.train_x.reshape(len(split.train_x), -1).double()
    train_sq = (train ** 2).sum(1)
    train_y = split.train_y.numpy()
    g = np.random.default_rng(seed)
    idx = np.sort(g.choice(len(split.test_x), size=min(n_real, len(split.test_x)), replace=False))
    real = split.test_x[idx].reshape(len(idx), -1).double().numpy()
    real_y = split.test_y[idx].numpy()
    r_lab, r_d = _nearest_training(real, train, train_sq, train_y)
    threshold = float(np.percentile(r_d, PERCENTILE))
    jp_real = _probs(judge_model, real).argmax(1)
    reference = {"n": int(len(idx)), "seed": seed, "nn_label_accuracy": float((r_lab == real_y).mean()),
                 "nn_distance_p50": float(np.median(r_d)), f"nn_distance_p{PERCENTILE:g}": threshold,
                 "near_training_digit_rate": float(((r_lab == real_y) & (r_d <= threshold)).mean()),
                 "judge_accuracy": float((jp_real == real_y).mean())}
    rows = []
    for name, x in xs.items():
        lab, d = _nearest_training(x, train, train_sq, train_y)
        jp = _probs(judge_model, x)
        mp = _probs(maker, x)[np.arange(len(t)), t] if maker is not None else None
        rows.append(JudgedRow(name, x.reshape(-1, 28, 28), lab, d, jp.argmax(1), jp[np.arange(len(t)), t], mp))
    return ReadabilityResult(t, rows, threshold, reference, judge_name,
                             {"n_real": int(len(idx)), "seed": seed, "percentile": PERCENTILE})


# ---------------------------------------------------------------------------------------------
# The verdict: 3.1.3 answered from the judges' counts
# ---------------------------------------------------------------------------------------------

READABLE_RULE = (
    "An image is readable when (a) its nearest training image (Euclidean over the 784 pixels, the image "
    "clipped to 0-255 as a person sees it) has the target's label and lies no farther than the "
    f"{PERCENTILE:g}th percentile of the same distance for real test digits, and (b) the judge network, which "
    "did not make the image, names the target. A set of class models is 'readable' when at least "
    f"{100 * READABLE_SHARE:.0f}% of it is readable, 'not readable' when at most {100 * UNREADABLE_SHARE:.0f}% is, "
    "'partly readable' otherwise. The key: the first set listed (the assignment's plain class models), then "
    "'/shown' when a later set (made by the same network with an image prior) is readable while the generating "
    f"network still gives each of its images a target probability of at least {MAKER_SURE:g}, '/not shown' "
    "otherwise.")


def readable_class(readable: int, n: int) -> str:
    """'readable' / 'partly readable' / 'not readable' for `readable` of `n` images (READABLE_RULE)."""
    if readable >= READABLE_SHARE * n:
        return "readable"
    return "not readable" if readable <= UNREADABLE_SHARE * n else "partly readable"


def rms_grey_levels(euclidean: float) -> float:
    """A Euclidean distance over the 784 pixels (grey levels) as the root-mean-square difference
    per pixel: the number a reader can picture."""
    return float(euclidean) / IMAGE_SIZE       # sqrt(IMAGE_SIZE²) pixels


def readable_verdict(rows: Mapping[str, Mapping], reference: Mapping, threshold: float,
                     judge: str = "second network") -> Verdict:
    """3.1.3 from the judges (`ReadabilityResult.counts` per row, first = the plain class models):
    do the class models look like digits, and does an image prior show why not?

    `reference`: `ReadabilityResult.reference` (real test digits); `threshold`: its distance limit
    (grey levels); `judge`: how the judge network is named in the sentence."""
    if not rows:
        raise ConfigError("readable_verdict needs at least one set of images")
    out: dict[str, dict[str, Any]] = {}
    parts = []
    for name, c in rows.items():
        n, k = int(c["n"]), int(c["readable"])
        if n < 1:
            raise ConfigError(f"{name}: no images were judged")
        cls = readable_class(k, n)
        out[name] = {"class": cls, "readable": k, "n": n, "near_training_digit": int(c["near_training_digit"]),
                     "named_by_judge": int(c["named_by_judge"]),
                     **({"maker_min_prob": float(c["maker_min_prob"])} if "maker_min_prob" in c else {})}
        s = (f"{name}: {k} of {n} readable ({out[name]['near_training_digit']} near a training digit of the target, "
             f"{out[name]['named_by_judge']} named by {judge}")
        if "maker_min_prob" in c:
            s += f", lowest target probability under the generating network {float(c['maker_min_prob']):.3f}"
        parts.append(s + ")")
    names = list(out)
    first = out[names[0]]
    shown = [m for m in names[1:] if out[m]["class"] == "readable" and out[m].get("maker_min_prob", 0.0) >= MAKER_SURE]
    key = first["class"] + ("" if len(names) == 1 else "/shown" if shown else "/not shown")
    head = {"readable": f"Yes, the {names[0]} class models can be read as their digits",
            "partly readable": f"Only partly: some of the {names[0]} class models can be read as their digits",
            "not readable": f"No, the {names[0]} class models cannot be read as digits"}[first["class"]]
    rms = rms_grey_levels(threshold)
    text = (f"{head}, judged by what did not make them: a real test digit differs from its nearest training image by "
            f"at most {rms:.0f} grey levels per pixel (root-mean-square) in {PERCENTILE:g}% of cases, and {judge} names "
            f"{100 * float(reference['judge_accuracy']):.1f}% of real test digits right. " + "; ".join(parts) + ".")
    if shown:
        text += (f" The {shown[0]} row, made by the same network with the same objective but kept among likely digit "
                 f"images, is readable: the network does hold a digit-shaped model of each class.")
    elif len(names) > 1:
        text += " No later row is both readable and believed by the generating network, so these rows do not show the reason."
    numbers = {"rows": out, "threshold_grey_levels": float(threshold), "threshold_rms_grey_levels": rms,
               "percentile": PERCENTILE,
               "judge": judge, "judge_accuracy_real": float(reference["judge_accuracy"]),
               "near_training_digit_rate_real": float(reference["near_training_digit_rate"]),
               "readable_share": READABLE_SHARE, "unreadable_share": UNREADABLE_SHARE, "maker_sure": MAKER_SURE,
               "shown_by": shown[0] if shown else None}
    return Verdict("3.1.3.readable", key, text, READABLE_RULE, numbers)
