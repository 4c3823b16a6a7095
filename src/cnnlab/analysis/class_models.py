"""Question 3.1: class models, gradient ascent of one class's logit from Gaussian noise."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import BLUR_SIGMA, REGULARIZED, SIGMA, STEPS, SYNTH_STEP_SIZE
from ..errors import ConfigError
from ._shared import N_CLASSES, AscentResult, ascent_grid, check_int, check_number, check_targets, cost_figure, pct
from .ascent import Pixels, ascend, initial_noise
from .likeness import LikenessResult
from .verdict import Verdict

if TYPE_CHECKING:
    import numpy.typing as npt
    from matplotlib.figure import Figure
    from torch import nn

# ---------------------------------------------------------------------------------------------
# Class models from noise (§3.1)
# ---------------------------------------------------------------------------------------------

@dataclass
class SynthesisResult(AscentResult):
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

    stem = "class_models"

    def arrays(self) -> dict[str, np.ndarray]:
        """`images` [T, 28, 28] 0–255, `targets` [T], `cost` [steps+1, T], `prob` [steps+1, T],
        `initial` [T, 28, 28] (plus `pred` [steps+1, T])."""
        return {"images": self.images.astype(np.float32), "targets": self.targets,
                "cost": self.cost.astype(np.float32), "prob": self.prob.astype(np.float32),
                "initial": self.initial.astype(np.float32), "pred": self.pred}

    def figure(self, likeness: LikenessResult | None = None) -> Figure:
        """The generated images with target, prediction and confidence (green: predicted as the
        target). Shown on 0–255 with values outside clipped for display, plus the initial noise.
        With `likeness` (from `digit_likeness`), each title adds r = correlation with the
        target's class-mean training image."""
        from ..figures import wrap_text
        T = len(self.targets)
        fig, axes = ascent_grid(T, title_lines=3 if likeness is not None else 2, suptitle_lines=3)
        axes[0].imshow(self.initial[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[0].set_title(f"start: noise\n128 ± {self.params.get('sigma', 0):g}", fontsize=8)
        self.draw_targets(axes, self.images, [f"\nr = {likeness.per_image['corr_target_mean'][i]:+.2f}"
                                              if likeness is not None else "" for i in range(T)])
        s = self.summary()
        shown = (f"; pixels span {s['pixel_min']:.0f}..{s['pixel_max']:.0f}, shown clipped to 0..255"
                 if s["fraction_pixels_outside_0_255"] > 0 else "")
        fig.suptitle(wrap_text(f"{self.label or 'class models'}: X ← X + {self.params['step_size']:g}·dC/dX, "
                               f"C = logits[target], {self.params['steps']} steps — {s['n_predicted_as_target']}/{T} "
                               f"predicted as target, min confidence {pct(s['min_target_prob'])}{shown}", fontsize=9),
                     fontsize=9)
        return fig

    def cost_figure(self) -> Figure:
        title = f"{self.label or 'class models'}: cost C = logits[target] against step"
        if self.params.get("blur_every"):
            title += f"\n(saw-tooth: the blur every {self.params['blur_every']} steps lowers C, the ascent wins it back)"
        return cost_figure(self.cost, self.prob, self.targets, title)


def synthesize(model: nn.Module, targets: Iterable[int] = range(N_CLASSES), steps: int = STEPS,
               step_size: float = SYNTH_STEP_SIZE, sigma: float = SIGMA, seed: int = 0, clip: bool = False,
               l2: float = 0.0, blur_every: int = 0, blur_sigma: float = BLUR_SIGMA, jitter: int = 0,
               label: str = "") -> SynthesisResult:
    """Class models from noise: maximize C = logits[target] by X ← X + step_size · dC/dX.

    Units (0–255 pixel scale): X starts at 128 + sigma·N(0, 1) (`sigma` grey levels, default `config.SIGMA`;
    the same seeded noise for every target); the network is fed X / 255; `step_size` multiplies
    dC/dX where X is in grey levels (default `config.SYNTH_STEP_SIZE`); `steps` default `config.STEPS`. Off by default, the
    regularizers (see REGULARIZED): `clip` X to [0, 255] after every step; `l2`: X ← (1 − l2)·X
    after every step (decay toward black, i.e. ascent on C − l2/(2·step_size)·‖X‖²);
    `blur_every` k steps a Gaussian blur of `blur_sigma` pixels; `jitter` j: each step's gradient
    is taken at X shifted by a random (dx, dy) in [−j, j]² (seeded).
    """
    targets = check_targets(targets)
    steps = check_int("steps", steps, 1)
    step_size = check_number("step_size", step_size, 0.0, lo_open=True)
    sigma = check_number("sigma", sigma, 0.0)
    l2 = check_number("l2", l2, 0.0)
    if l2 >= 1:
        raise ConfigError(f"l2 is a decay per step and must be < 1; got {l2:g}")
    blur_every = check_int("blur_every", blur_every, 0)
    blur_sigma = check_number("blur_sigma", blur_sigma, 0.0)
    jitter = check_int("jitter", jitter, 0)
    if jitter > 8:
        raise ConfigError(f"jitter is a shift in pixels and must be ≤ 8; got {jitter}")
    seed = check_int("seed", seed, 0)
    x0 = initial_noise(len(targets), sigma, seed)
    t0 = time.perf_counter()
    tr = ascend(model, targets, Pixels(x0, step_size=step_size, clip=bool(clip), l2=l2, blur_every=blur_every,
                                       blur_sigma=blur_sigma, jitter=jitter, seed=seed), steps=steps)
    seconds = time.perf_counter() - t0
    params = dict(steps=steps, step_size=step_size, sigma=sigma, seed=seed, clip=bool(clip), l2=l2,
                  blur_every=blur_every, blur_sigma=blur_sigma, jitter=jitter,
                  scale="0-255 (network fed X/255)")
    return SynthesisResult(tr.images.numpy(), x0.numpy(), np.array(targets, dtype=np.int64), tr.cost,
                           tr.prob, tr.pred, tr.logit, params, seconds, label)


def synthesize_regularized(model: nn.Module, targets: Iterable[int] = range(N_CLASSES), **kwargs: Any) -> SynthesisResult:
    """`synthesize` with the REGULARIZED preset (clip, L2 decay, blur, jitter); kwargs override."""
    return synthesize(model, targets, **{**REGULARIZED, "label": "regularized class models", **kwargs})


# ---------------------------------------------------------------------------------------------
# Verdicts (3.1.2 confidence, 3.1.4 cost)
# ---------------------------------------------------------------------------------------------

HIGH_CONFIDENCE = 0.99   # "high confidence": probability of the target at least 99%

CONFIDENCE_RULE = (f"'yes' when every image is predicted as its target with probability at least "
                   f"{100 * HIGH_CONFIDENCE:.0f}% (what the answer calls high confidence); otherwise 'no'.")


def _hits(r: Mapping) -> tuple[int, int, float, float]:
    t = np.asarray(r["targets"])
    pred, prob = np.asarray(r["final_pred"]), np.asarray(r["final_target_prob"], dtype=np.float64)
    if not (len(t) == len(pred) == len(prob)) or len(t) == 0:
        raise ConfigError("targets, final_pred and final_target_prob must have the same, non-zero length")
    return int((pred == t).sum()), len(t), float(prob.min()), float(prob.mean())


def confidence_verdict(plain: Mapping, regularized: Mapping | None = None) -> Verdict:
    """3.1.2 "Is the network always predicting target_class with high confidence?" from the
    class models' `targets`, `final_pred` and `final_target_prob` (SynthesisResult.to_dict())."""
    hit, n, lo, mean = _hits(plain)
    key = "yes" if hit == n and lo >= HIGH_CONFIDENCE else "no"
    head = (f"Yes: all {n} plain class models are predicted as their target with probability at least "
            f"{100 * HIGH_CONFIDENCE:.0f}%" if key == "yes" else
            f"Not always: {hit} of {n} plain class models are predicted as their target, and the lowest "
            f"target probability is below {100 * HIGH_CONFIDENCE:.0f}%")
    text = f"{head} (lowest {100 * lo:.3f}%, mean {100 * mean:.3f}%)."      # 3 decimals: 99.997% is not 100%
    numbers: dict = {"n": n, "n_predicted_as_target": hit, "min_target_prob": lo, "mean_target_prob": mean,
                     "threshold": HIGH_CONFIDENCE}
    if regularized is not None:
        rh, rn, rlo, rmean = _hits(regularized)
        numbers["regularized"] = {"n": rn, "n_predicted_as_target": rh, "min_target_prob": rlo,
                                  "mean_target_prob": rmean}
        text += f" The regularized ones: {rh} of {rn} predicted as their target, lowest probability {100 * rlo:.2f}%."
    return Verdict("3.1.2", key, text, CONFIDENCE_RULE, numbers)


LATE_SHARE = 0.1   # "at the end": the last 10% of the steps

COST_RULE = ("'increasing' when the mean cost over the targets is higher after the last step than on the "
             "initial noise and the cost rises on at least half of all (target, step) pairs; 'decreasing' when "
             "it is lower and falls on at least half; otherwise 'neither'. It is 'still rising' at the end when "
             f"over the last {100 * LATE_SHARE:.0f}% of the steps it rises on at least half of the (target, step) "
             "pairs and its mean gain there is positive.")


def cost_verdict(cost: npt.ArrayLike) -> Verdict:
    """3.1.4 "Is the cost increasing or decreasing?" from the cost per step and target
    ([steps + 1, T]; row 0 is the initial noise)."""
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] < 2:
        raise ConfigError(f"cost must be [steps + 1, targets] with at least one step; got shape {list(c.shape)}")
    steps = c.shape[0] - 1
    d = np.diff(c, axis=0)
    start, end = float(c[0].mean()), float(c[-1].mean())
    rising, falling = float((d > 0).mean()), float((d < 0).mean())
    late = max(1, int(round(LATE_SHARE * steps)))
    late_rising = float((d[-late:] > 0).mean())
    late_gain = float((c[-1] - c[-1 - late]).mean())
    still = late_rising >= 0.5 and late_gain > 0
    key = ("increasing" if end > start and rising >= 0.5 else
           "decreasing" if end < start and falling >= 0.5 else "neither")
    head = {"increasing": "The cost increases", "decreasing": "The cost decreases",
            "neither": "The cost neither increases nor decreases steadily"}[key]
    text = (f"{head}: from a mean of {start:.2f} on the noise to {end:.2f} after {steps} steps, rising on "
            f"{100 * rising:.1f}% of the steps. Over the last {late} steps it rises on {100 * late_rising:.0f}% of "
            f"them (mean change {late_gain:+.2f}), so "
            + ("it is still rising at the end." if still else "it is not still rising at the end."))
    numbers = {"steps": steps, "start_mean": start, "end_mean": end, "fraction_rising": rising,
               "fraction_falling": falling, "late_steps": late, "late_fraction_rising": late_rising,
               "late_gain": late_gain, "still_rising": still}
    return Verdict("3.1.4", key, text, COST_RULE, numbers)
