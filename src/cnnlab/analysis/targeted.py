"""Question 3.2: targeted fakes, C = logits[target] − β·MSE(X, source), and the β sweep."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import BETA, BETAS, SIGMA, STEP_SIZE, STEPS
from ..errors import ConfigError
from ._shared import N_CLASSES, AnalysisResult, AscentResult, ascent_grid, check_int, check_number, check_targets, cost_figure
from .ascent import Pixels, ascend, initial_noise
from .likeness import LikenessResult, pearson
from .verdict import Verdict

if TYPE_CHECKING:
    import numpy.typing as npt
    from matplotlib.figure import Figure
    from torch import nn

# ---------------------------------------------------------------------------------------------
# Targeted fakes (§3.2)
# ---------------------------------------------------------------------------------------------

ADAPT_ROUNDS = 3        # a target not reached at β gets up to 3 more rounds, at β/2, β/4, β/8

def as_image_255(image: npt.ArrayLike | torch.Tensor, scale: str = "auto") -> torch.Tensor:
    """A 28×28 image as float32 on the 0–255 scale.

    `scale`: "255" (values in 0–255), "01" (values in [0, 1]) or "auto": uint8 arrays, and float
    arrays with any value > 1, are taken as 0–255; other float arrays as [0, 1].
    """
    t = torch.as_tensor(np.array(image) if not isinstance(image, torch.Tensor) else image)   # a copy: the caller's array may be read-only
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
class AdversarialResult(AscentResult):
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
    # The β each target ended with: `beta`, or less for a target that β = `beta` left unreached
    # (see `adversarial`'s `adapt`); the steps each target ran.
    beta_per_target: np.ndarray | None = None
    steps_per_target: np.ndarray | None = None

    @property
    def not_reached(self) -> list[int]:
        """The targets the network does not read the final fake as."""
        return [int(t) for t, p in zip(self.targets, self.final_pred) if int(p) != int(t)]

    @property
    def adapted(self) -> list[int]:
        """The targets whose β was lowered because β = `beta` did not reach them."""
        if self.beta_per_target is None:
            return []
        return [int(t) for t, b in zip(self.targets, self.beta_per_target) if b < self.beta]

    @property
    def mse(self) -> np.ndarray:
        """Final MSE to the source, [T], grey levels² (0–255 scale)."""
        return self.mse_history[-1]

    @property
    def corr_to_source(self) -> np.ndarray:
        return pearson(self.images.reshape(len(self.targets), -1), self.source.reshape(1, -1))[:, 0]

    def summary(self) -> dict:
        fooled = self.final_pred == self.targets
        others = self.targets != self.source_label if self.source_label is not None else np.ones_like(fooled)
        return {"n_predicted_as_target": int(fooled.sum()),
                "all_predicted_as_target": bool(fooled.all()),
                "not_reached": self.not_reached, "beta_lowered_for": self.adapted,
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
                "final_cost": self.cost[-1].tolist(),
                "beta_per_target": None if self.beta_per_target is None else self.beta_per_target.tolist(),
                "steps_per_target": None if self.steps_per_target is None else self.steps_per_target.tolist(),
                **self.summary()}

    stem = "adversarial"

    def arrays(self) -> dict[str, np.ndarray]:
        """`images` [T, 28, 28] 0–255, `targets` [T], `source` [28, 28] 0–255, `cost`, `prob`
        [steps+1, T], `beta` (plus `pred`, `mse` [steps+1, T], `initial`)."""
        return {"images": self.images.astype(np.float32), "targets": self.targets,
                "source": self.source.astype(np.float32), "cost": self.cost.astype(np.float32),
                "prob": self.prob.astype(np.float32), "beta": np.float64(self.beta),
                "pred": self.pred, "mse": self.mse_history.astype(np.float32),
                "initial": self.initial.astype(np.float32)}

    def figure(self, likeness: LikenessResult | None = None) -> Figure:
        """Source, then one fake per target: target, prediction (confidence), MSE to the source
        and, with `likeness` from `digit_likeness`, which digit it looks like: the label of the
        most correlated training image (`nn_label`)."""
        from ..figures import wrap_text
        T = len(self.targets)
        fig, axes = ascent_grid(T, title_lines=4 if likeness is not None else 3, suptitle_lines=3)
        axes[0].imshow(self.source, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        lab = f" (a {self.source_label})" if self.source_label is not None else ""
        axes[0].set_title(f"source{lab}", fontsize=8, fontweight="bold")
        for sp in axes[0].spines.values():
            sp.set_visible(True)
            sp.set_color("tab:blue")
            sp.set_linewidth(2)
        self.draw_targets(axes, self.images, [f"\nMSE {self.mse[i]:.0f}" + (f"\nlooks like {likeness.per_image['nn_label'][i]}"
                                                                          if likeness is not None else "") for i in range(T)])
        s = self.summary()
        fig.suptitle(wrap_text(f"targeted fakes: C = logits[target] − β·MSE(X, source), β = {self.beta:g}, "
                               f"{self.params['steps']} steps from {self.params['init']} — "
                               f"{s['n_predicted_as_target']}/{T} fooled, mean RMSE to source "
                               f"{s['mean_rmse_to_source']:.0f} grey levels" + self.adapt_note(), fontsize=9), fontsize=9)
        return fig

    def adapt_note(self) -> str:
        """What differed from one β for all: targets whose β was lowered, targets not reached."""
        parts = []
        if self.adapted and self.beta_per_target is not None:
            low = {int(t): float(b) for t, b in zip(self.targets, self.beta_per_target) if b < self.beta}
            parts.append("β lowered to reach " + ", ".join(f"{t} (β = {b:g})" for t, b in low.items()))
        if self.not_reached:
            parts.append("not reached: " + ", ".join(str(t) for t in self.not_reached))
        return ("; " + "; ".join(parts)) if parts else ""

    def cost_figure(self) -> Figure:
        return cost_figure(self.cost, self.prob, self.targets,
                            f"targeted fakes (β = {self.beta:g}): cost C = logits[target] − β·MSE against step")


def adversarial(model: nn.Module, source_image: npt.ArrayLike | torch.Tensor, targets: Iterable[int] = range(N_CLASSES), beta: float = BETA,
                steps: int = STEPS, step_size: float = STEP_SIZE, init: str = "noise",
                sigma: float = SIGMA, seed: int = 0, clip: bool = False, source_label: int | None = None,
                scale: str = "auto", adapt: int = ADAPT_ROUNDS) -> AdversarialResult:
    """Targeted fakes: maximize C = logits[target] − β·MSE(X, source) by X ← X + step_size · dC/dX.

    `source_image`: 28×28 (any shape with 784 pixels), uint8 or float; `scale` says whether it is
    on 0–255 or [0, 1] ("auto": uint8 or max > 1 means 0–255). Everything else is on the 0–255
    scale: MSE is the mean over pixels of (X − source)² in grey levels² (so β·MSE is in logit
    units; default `config.BETA`), `step_size` default `config.STEP_SIZE`, `steps` default
    `config.STEPS`. `init`: "noise" starts
    from 128 + sigma·N(0, 1) as §3.1 (the assignment's choice), "source" starts from the source
    itself. `clip`: keep X in [0, 255] after every step (off by default, as in the assignment).

    `adapt`: a target that the network does not read the fake as after `steps` steps gets up to
    `adapt` more rounds of `steps` steps, each with its β halved (from where it stopped; the others
    stay as they are): the pull to the source can balance the target's gradient short of the
    target, and how close that balance falls differs between networks, even between the rounding of
    two CPUs. Which targets needed it, and which were still not reached, the result says
    (`adapted`, `not_reached`). `adapt=0`: one fixed β for all (the β sweep).
    """
    targets = check_targets(targets)
    beta = check_number("beta", beta, 0.0)
    steps = check_int("steps", steps, 1)
    step_size = check_number("step_size", step_size, 0.0, lo_open=True)
    sigma = check_number("sigma", sigma, 0.0)
    seed = check_int("seed", seed, 0)
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
    tr = ascend(model, targets, Pixels(x0, step_size=step_size, source=src, beta=beta, clip=bool(clip), seed=seed),
                steps=steps)
    images = tr.images.clone()
    hist = {"cost": tr.cost, "prob": tr.prob, "pred": tr.pred, "logit": tr.logit, "mse": tr.mse}
    betas, steps_run = np.full(T, beta), np.full(T, steps)
    for _ in range(check_int("adapt", adapt, 0)):
        miss = np.flatnonzero(hist["pred"][-1] != np.asarray(targets))
        if miss.size == 0 or beta == 0:
            break
        betas[miss] /= 2
        more = ascend(model, [targets[i] for i in miss],
                      Pixels(images[miss], step_size=step_size, source=src, beta=betas[miss], clip=bool(clip),
                             seed=seed), steps=steps)
        images[miss] = more.images
        steps_run[miss] += steps
        for k, h in hist.items():       # the targets already reached hold their last values
            ext = np.repeat(h[-1:], steps, axis=0)
            ext[:, miss] = getattr(more, k)[1:]
            hist[k] = np.concatenate([h, ext])
    seconds = time.perf_counter() - t0
    params = dict(steps=steps, step_size=step_size, beta=beta, init=init, sigma=sigma, seed=seed,
                  clip=bool(clip), adapt=adapt, scale="0-255 (network fed X/255; MSE in grey levels²)")
    return AdversarialResult(images.numpy(), x0.numpy(), src.numpy(),
                             None if source_label is None else int(source_label),
                             np.array(targets, dtype=np.int64), beta, hist["cost"], hist["prob"], hist["pred"],
                             hist["logit"], hist["mse"], params, seconds, betas, steps_run)




@dataclass
class BetaSweepResult(AnalysisResult):
    """One `adversarial` run per β (same noise, same targets)."""
    stem = "beta_sweep"
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

    def figure(self) -> Figure:
        """Left: fooling rate and resemblance (correlation with the source) against β. Right: the
        fakes, one row per β, one column per target."""
        import matplotlib.pyplot as plt

        from ..figures import FIG_WIDTH_IN
        d = self.to_dict()["rows"]
        T = len(self.results[0].targets)
        nb = len(self.betas)
        cell = (FIG_WIDTH_IN - 0.8) / (T + 1)
        fig = plt.figure(figsize=(FIG_WIDTH_IN, nb * (cell + 0.05) + 0.5 + 2.6), layout="constrained")
        outer = fig.add_gridspec(2, 1, height_ratios=[nb * (cell + 0.05) + 0.3, 2.4])
        ax = fig.add_subplot(outer[1])
        gs = outer[0].subgridspec(nb, T + 1)
        xb = np.arange(nb)
        ax.plot(xb, [100 * r["fooling_rate_other_classes"] for r in d], "o-", color="tab:red",
                label="fooled: pred = target (%)")
        ax.plot(xb, [100 * r["mean_corr_to_source"] for r in d], "s-", color="tab:blue",
                label="looks like source: 100·corr")
        ax.plot(xb, [100 * r["mean_target_prob"] for r in d], "^--", color="tab:red", alpha=0.5, ms=4,
                label="mean target prob (%)")
        ax.set_xticks(xb, [f"{b:g}" for b in self.betas])
        ax.set(xlabel="β (MSE in grey levels²)", ylabel="%", ylim=(-5, 105))
        ax.set_title("fooling vs resemblance", fontsize=9.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        r0 = self.results[0]
        for i, (b, r) in enumerate(zip(self.betas, self.results)):
            a = fig.add_subplot(gs[i, 0])
            a.imshow(r.source, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            a.set_xticks([]), a.set_yticks([])
            a.set_ylabel(f"β = {b:g}", fontsize=8, rotation=0, ha="right", va="center")
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
        fig.suptitle("β sweep: C = logits[target] − β·MSE(X, source)\nrows: β; columns: the target; "
                     "frame green = classified as the target", fontsize=9)
        return fig


def beta_sweep(model: nn.Module, source_image: npt.ArrayLike | torch.Tensor, betas: Sequence[float] = BETAS,
               targets: Iterable[int] = range(N_CLASSES), **kwargs: Any) -> BetaSweepResult:
    """`adversarial` for each β in `betas` (other kwargs as for `adversarial`)."""
    betas = [check_number("beta", b, 0.0) for b in betas]
    if not betas:
        raise ConfigError("betas is empty")
    targets = check_targets(targets)
    kwargs.setdefault("adapt", 0)          # the sweep shows what each β does on its own
    return BetaSweepResult(betas, [adversarial(model, source_image, targets, beta=b, **kwargs) for b in betas])


RESEMBLES = 5   # of the 10 fakes: "resembles" needs at least half of them

RESEMBLANCE_RULE = (
    f"'source' when, for at least {RESEMBLES} of the 10 fakes, the nearest class-mean training image or the most "
    "correlated single training image (Pearson r over the 784 pixels) is of the source digit (whichever measure "
    f"counts more); else 'target' when that holds for the fake's own target class for at least {RESEMBLES}; "
    "otherwise 'neither'.")


def resemblance_verdict(source_digit: int, targets: Sequence[int], nearest_class: Sequence[int],
                        nn_label: Sequence[int], predicted: Sequence[int]) -> Verdict:
    """3.2.1 "Does the generated image resemble a digit? If so, what digit?" from the likeness
    measures of the fakes (`digit_likeness(...).per_image`: nearest_class, nn_label) and the
    network's predictions for them."""
    t, near, nn = np.asarray(targets), np.asarray(nearest_class), np.asarray(nn_label)
    if not (len(t) == len(near) == len(nn) == len(predicted)) or len(t) == 0:
        raise ConfigError("targets, nearest_class, nn_label and predicted must have the same, non-zero length")
    d = int(source_digit)
    by_mean, by_nn = int((near == d).sum()), int((nn == d).sum())
    t_mean, t_nn = int((near == t).sum()), int((nn == t).sum())
    key = ("source" if max(by_mean, by_nn) >= RESEMBLES else
           "target" if max(t_mean, t_nn) >= RESEMBLES else "neither")
    head = {"source": f"They resemble the digit {d}, their source, not their targets",
            "target": "They resemble their targets, not the source digit",
            "neither": f"Fewer than {RESEMBLES} of them resemble the source {d} or their targets by these measures"}[key]
    text = (f"{head}: the most correlated training image is a {d} for {by_nn} of the {len(t)} fakes (labels: "
            f"{', '.join(str(int(c)) for c in nn)}) and the nearest class-mean image is the {d}'s for {by_mean} "
            f"(nearest classes: {', '.join(str(int(c)) for c in near)}). The fake's own target is the most correlated "
            f"training image's label for {t_nn} and the nearest class mean for {t_mean} of them. "
            f"The network reads them as {', '.join(str(int(c)) for c in predicted)} "
            f"(targets {', '.join(str(int(c)) for c in t)}).")
    numbers = {"source_digit": d, "n": len(t), "nn_is_source": by_nn, "nearest_is_source": by_mean,
               "nn_is_target": t_nn, "nearest_is_target": t_mean, "required": RESEMBLES,
               "nn_label": nn.tolist(), "nearest_class": near.tolist(), "predicted": [int(c) for c in predicted],
               "targets": t.tolist()}
    return Verdict("3.2.1", key, text, RESEMBLANCE_RULE, numbers)
