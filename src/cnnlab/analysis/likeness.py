"""Does it look like a digit? Correlation with class means, nearest training image, transfer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError
from ._shared import N_CLASSES, AnalysisResult, check_targets, device_of
from .verdict import Verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..data import Split

# ---------------------------------------------------------------------------------------------
# Does it look like a digit?
# ---------------------------------------------------------------------------------------------

def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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


def class_means(split: Split) -> np.ndarray:
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


CHUNK = 10_000   # training images per matrix product in _nearest_train


def _train_units(train: np.ndarray, chunk: int = CHUNK) -> list[np.ndarray]:
    """The training images as unit rows (`_unit_rows`), chunk by chunk: made once per call of
    digit_likeness and used for both its reference and its images (the float copy of 50,000
    images was made, and normalized, twice)."""
    return [_unit_rows(train[i:i + chunk]) for i in range(0, len(train), chunk)]


def _nearest_train(x: np.ndarray, train_units: list[np.ndarray], train_y: np.ndarray):
    """Label and correlation of the most correlated training image for every row of x
    (float32 matrix products over the chunks of `_train_units`)."""
    best = np.full(len(x), -2.0)
    lab = np.zeros(len(x), dtype=np.int64)
    xu = _unit_rows(x)
    start = 0
    for units in train_units:
        r = xu @ units.T
        j = r.argmax(1)
        v = r[np.arange(len(x)), j]
        better = v > best
        best[better] = v[better]
        lab[better] = train_y[start + j[better]]
        start += len(units)
    return lab, best


@torch.inference_mode()
def _transfer(models: Mapping[str, torch.nn.Module], images: np.ndarray, targets) -> dict:
    out = {}
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).reshape(-1, 1, 28, 28) / 255.0
    for name, m in models.items():
        was = m.training
        m.eval()
        probs = m(x.to(device_of(m))).double().softmax(1).cpu().numpy()
        m.train(was)
        pred = probs.argmax(1)
        entry = {"pred": pred.tolist(), "confidence": probs.max(1).tolist()}
        if targets is not None:
            t = np.asarray(targets)
            entry["target_prob"] = probs[np.arange(len(t)), t].tolist()
            entry["agree_rate"] = float((pred == t).mean())
        out[name] = entry
    return out


@dataclass
class LikenessResult(AnalysisResult):
    """What `digit_likeness` measured. JSON sections (`to_dict()` keys in brackets): `measure`,
    `per_image` ["images"]: lists over the images (corr_class_mean, nearest_class, nn_label, ...),
    `summary`: their means, `reference` ["reference_real_test_digits"]: the same for real test
    digits, `transfer` (with models): each model's predictions. Arrays: `images` [n, 28, 28] and
    the class-mean training images `means` [10, 28, 28], both 0–255."""
    stem = "likeness"
    measure: str
    per_image: dict[str, list]
    summary: dict[str, Any]
    reference: dict[str, Any]
    transfer: dict[str, dict] | None
    images: np.ndarray
    means: np.ndarray

    @property
    def targets(self) -> list[int] | None:
        """The class each image was meant to be (per_image["target"]), or None without targets."""
        return self.per_image.get("target")

    def to_dict(self) -> dict:
        out = {"measure": self.measure, "images": self.per_image, "summary": self.summary,
               "reference_real_test_digits": self.reference}
        if self.transfer is not None:
            out["transfer"] = self.transfer
        return out

    def figure(self) -> Figure:
        """Ten images aimed at the ten classes in order: under the class means, as in the report.
        Any other set: a grid in the given order (at most FIGURE_MAX images), each titled with
        its target (if any), its r and the nearest class."""
        if self.targets == list(range(N_CLASSES)):
            return likeness_figure([("images", self.images, self)], self.means)
        return _grid_figure(self)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"images": self.images.astype(np.float32), "class_means": self.means.astype(np.float32)}


def digit_likeness(images: np.ndarray | torch.Tensor, split: Split,
                   models: Mapping[str, torch.nn.Module] | None = None,
                   targets: Sequence[int] | np.ndarray | None = None,
                   n_real: int = 500, seed: int = 0, means: np.ndarray | None = None) -> LikenessResult:
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
    train = _train_units(split.train_x.reshape(len(split.train_x), -1).numpy())
    train_y = split.train_y.numpy()

    # Reference: real test digits.
    g = np.random.default_rng(seed)
    idx = np.sort(g.choice(len(split.test_x), size=min(n_real, len(split.test_x)), replace=False))
    real = split.test_x[idx].reshape(len(idx), -1).numpy().astype(np.float64)
    real_y = split.test_y[idx].numpy()
    r_real = pearson(real, mflat)
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

    r = pearson(x, mflat)
    nearest = r.argmax(1)
    nn_lab, nn_r = _nearest_train(x, train, train_y)
    ps = _pixel_stats(x)
    per = {"corr_class_mean": r.round(4).tolist(), "nearest_class": nearest.tolist(),
           "nearest_class_corr": r.max(1).tolist(), "nn_label": nn_lab.tolist(), "nn_corr": nn_r.tolist(),
           **{k: v.tolist() for k, v in ps.items()}}
    summary: dict[str, Any] = {"nearest_class_corr_mean": float(r.max(1).mean()), "nn_corr_mean": float(nn_r.mean()),
               **{f"{k}_mean": float(v.mean()) for k, v in ps.items()}}
    if targets is not None:
        t = np.asarray(check_targets(targets))
        if len(t) != len(x):
            raise ConfigError(f"{len(t)} targets for {len(x)} images")
        own = r[np.arange(len(t)), t]
        pct = [float((own_real[real_y == c] <= v).mean() * 100) if (real_y == c).any() else float("nan")
               for c, v in zip(t, own)]
        per.update(target=t.tolist(), corr_target_mean=own.tolist(), real_percentile=pct)
        summary.update(corr_target_mean_mean=float(own.mean()),
                       nearest_is_target_rate=float((nearest == t).mean()),
                       nn_label_is_target_rate=float((nn_lab == t).mean()),
                       real_percentile_median=float(np.median(pct)))
    tr = _transfer(models, x.reshape(-1, 28, 28), targets) if models else None
    if tr and targets is not None:
        summary["transfer_agree_rate"] = {k: v["agree_rate"] for k, v in tr.items()}
    return LikenessResult("Pearson correlation over the 784 pixels (0-255 scale)", per, summary, reference, tr,
                          x.reshape(-1, 28, 28), means)


def _draw_digit(ax: Any, image: np.ndarray) -> None:
    """One 28×28 image on the 0–255 scale (values outside it clipped), no ticks."""
    ax.imshow(np.clip(image, 0, 255), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])


def _row_label(ax: Any, text: str) -> None:
    ax.set_ylabel(text, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)


def _reference_text(reference: dict[str, Any]) -> str:
    """What r means, with the real test digits' own r as the yardstick."""
    return (f"r = correlation with the class-mean image (real test digits: mean {reference['corr_own_mean_mean']:.2f}, "
            f"5th percentile {reference['corr_own_mean_p05']:.2f}); → nearest class by r")


def likeness_figure(rows: Sequence[tuple[str, np.ndarray, LikenessResult | None]], means: np.ndarray,
                    title: str = "") -> Figure:
    """Rows of images (label, [10, 28, 28] 0–255, their `digit_likeness` with targets 0–9, or None)
    under the class-mean training images, each titled with r (correlation with its class's mean)
    and the nearest class."""
    import matplotlib.pyplot as plt

    from ..figures import FIG_WIDTH_IN, wrap_text
    allrows = [("class-mean training images", means, None)] + list(rows)
    n = len(allrows)
    cell = (FIG_WIDTH_IN - 1.3) / N_CLASSES
    fig, axes = plt.subplots(n, N_CLASSES, figsize=(FIG_WIDTH_IN, n * (cell + 0.4) + 0.6), squeeze=False,
                             layout="constrained")
    for i, (label, ims, lk) in enumerate(allrows):
        for c in range(N_CLASSES):
            ax = axes[i, c]
            _draw_digit(ax, ims[c])
            if lk is not None:
                rr = lk.per_image["corr_target_mean"][c]
                nc = lk.per_image["nearest_class"][c]
                ax.set_title(f"r {rr:+.2f}\n→ {nc}", fontsize=7.5, color="tab:green" if nc == c else "tab:red")
            elif i == 0:
                ax.set_title(f"class {c}", fontsize=8)
        lab = wrap_text(label, 1.2, 8)
        if lk is not None:
            s = lk.summary
            lab += f"\nmean r {s['corr_target_mean_mean']:+.2f}\nlooks like\ntarget {s['nearest_is_target_rate'] * 100:.0f}%"
        _row_label(axes[i, 0], lab)
    ref = next((lk for _, _, lk in rows if lk is not None), None)
    if ref is not None:
        title = (title + "\n" if title else "") + _reference_text(ref.reference) + " (green = the target)"
    if title:
        fig.suptitle(wrap_text(title, fontsize=9), fontsize=9)
    return fig


FIGURE_MAX = 60          # images drawn by LikenessResult.figure's grid (the JSON holds them all)


def _grid_figure(lk: LikenessResult) -> Figure:
    """The class-mean training images, then `lk`'s images ten to a row in the order given."""
    import matplotlib.pyplot as plt

    from ..figures import FIG_WIDTH_IN, wrap_text
    n = min(len(lk.images), FIGURE_MAX)
    rows = 1 + -(-n // N_CLASSES)
    cell = (FIG_WIDTH_IN - 1.3) / N_CLASSES
    fig, axes = plt.subplots(rows, N_CLASSES, figsize=(FIG_WIDTH_IN, rows * (cell + 0.4) + 0.6), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.set_axis_off()
    for c in range(N_CLASSES):
        axes[0, c].set_axis_on()
        _draw_digit(axes[0, c], lk.means[c])
        axes[0, c].set_title(f"class {c}", fontsize=8)
    _row_label(axes[0, 0], wrap_text("class-mean training images", 1.2, 8))
    per = lk.per_image
    for i in range(n):
        ax = axes[1 + i // N_CLASSES, i % N_CLASSES]
        ax.set_axis_on()
        _draw_digit(ax, lk.images[i])
        near = per["nearest_class"][i]
        if lk.targets is not None:
            t = lk.targets[i]
            ax.set_title(f"for {t}\nr {per['corr_target_mean'][i]:+.2f}\n→ {near}", fontsize=7.5,
                         color="tab:green" if near == t else "tab:red")
        else:
            ax.set_title(f"r {per['nearest_class_corr'][i]:+.2f}\n→ {near}", fontsize=7.5)
    for r in range(1, rows):
        first, last = (r - 1) * N_CLASSES, min(r * N_CLASSES, n) - 1
        _row_label(axes[r, 0], f"images\n#{first}–{last}")
    title = _reference_text(lk.reference)
    if lk.targets is not None:
        title += (f" (green = the image's target; {lk.summary['nearest_is_target_rate'] * 100:.0f}% of "
                  f"{len(lk.images)} look like their target)")
    if len(lk.images) > n:
        title += f"; the first {n} of {len(lk.images)} images shown"
    fig.suptitle(wrap_text(title, fontsize=9), fontsize=9)
    return fig


REAL_PERCENTILE = 5       # r at least that of the 5th-percentile real test digit
NEAREST_IS_TARGET = 0.5   # nearest class mean = the target for at least half the images

LIKENESS_RULE = (
    "A set of images is 'digit-like' when (a) their mean Pearson r with their target's class-mean training "
    f"image is at least the {REAL_PERCENTILE}th percentile of the same r for real test digits and (b) the "
    f"nearest class mean is their target for at least {100 * NEAREST_IS_TARGET:.0f}% of them (chance: 10%); "
    "otherwise 'not digit-like'. The key answers for the first set listed (the assignment's plain class "
    "models): 'yes' when it is digit-like, 'no' otherwise.")


def looks_like_digits(rows: Mapping[str, Mapping], reference: Mapping) -> Verdict:
    """3.1.3 "Do the generated images look like a number?" for any number of image sets.

    `rows`: name → the `summary` of `digit_likeness(..., targets=...)` for that set (first = the
    set the key answers for); `reference`: its `reference_real_test_digits`."""
    if not rows:
        raise ConfigError("looks_like_digits needs at least one set of images")
    p05 = float(reference["corr_own_mean_p05"])
    out, parts = {}, []
    for name, s in rows.items():
        r, near = float(s["corr_target_mean_mean"]), float(s["nearest_is_target_rate"])
        like = r >= p05 and near >= NEAREST_IS_TARGET
        out[name] = {"digit_like": like, "corr_target_mean": r, "nearest_is_target_rate": near}
        parts.append(f"{name}: {'digit-like' if like else 'not digit-like'} (mean r {r:.2f}, nearest class "
                     f"= target for {100 * near:.0f}%)")
    first = next(iter(rows))
    key = "yes" if out[first]["digit_like"] else "no"
    head = (f"Yes, the {first} images look like digits by this measure" if key == "yes" else
            f"No, the {first} images do not look like digits by this measure")
    text = (f"{head}: a real test digit at the {REAL_PERCENTILE}th percentile correlates r = {p05:.2f} with its "
            f"class mean, and the nearest class mean names a real digit's class "
            f"{100 * float(reference['nearest_class_accuracy']):.0f}% of the time. " + "; ".join(parts) + ".")
    numbers = {"rows": out, "real_p05": p05, "real_percentile": REAL_PERCENTILE,
               "real_nearest_class_accuracy": float(reference["nearest_class_accuracy"]),
               "nearest_required": NEAREST_IS_TARGET, "chance": 0.1}
    return Verdict("3.1.3", key, text, LIKENESS_RULE, numbers)
