"""One frozen, typed configuration for training, saved into every run.

Presets give the defaults; flags the user gives override them. Unknown keys are rejected.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
DATASET_NAMES = ("mnist", "fashion-mnist")
# Seeds feed torch.Generator.manual_seed after the loop mixes them (seed * 1_000_003 + epoch must
# fit in int64) and numpy's default_rng; 2^32 - 1 keeps every use in range.
MAX_SEED = 2**32 - 1
MAX_THREADS = 1024            # torch.set_num_threads takes a C int; no machine has more cores
MIN_LR = 1e-8                 # below this an fp32 weight of ~1e-2 cannot change (eps ≈ 1.2e-7)


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _bool(x: Any) -> bool:
    return isinstance(x, bool)


def _setting(default: Any, help: str, ok: Callable[[Any], bool], accepts: str,
             choices: tuple[str, ...] | None = None) -> Any:
    """A TrainConfig field with its help text, its rule and the words for what it accepts, in one
    place: the config checks values with the rule, and `cnnlab train`'s flags show the same words."""
    return field(default=default, metadata={"help": help, "ok": ok, "accepts": accepts, "choices": choices})


def _one_of(names: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in names), f"one of {', '.join(names)}"


def _int_in(lo: int, hi: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _int(v) and lo <= v <= hi), f"an integer in [{lo}, {hi}]"


MAX_EPOCHS = 100_000


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = _setting("mnist", "which images: handwritten digits or Zalando's clothes (same shapes)",
                            *_one_of(DATASET_NAMES), choices=DATASET_NAMES)
    batch_norm: bool = _setting(False, "BatchNorm2d after conv1 and conv2, before their ReLU", _bool, "true or false")
    epochs: int = _setting(12, "passes over the 50,000 training images", *_int_in(1, MAX_EPOCHS))
    batch_size: int = _setting(256, "images per optimizer step", *_int_in(1, 60_000))
    lr: float = _setting(4e-3, "peak learning rate of the one-cycle schedule",
                         lambda v: _finite(v) and MIN_LR <= v <= 10, f"a number in [{MIN_LR:g}, 10]")
    pct_start: float = _setting(0.25, "fraction of steps spent warming up to lr",
                                lambda v: _finite(v) and 0 < v < 1, "a number in (0, 1)")
    weight_decay: float = _setting(5e-4, "decoupled (AdamW) weight decay, per unit lr",
                                   lambda v: _finite(v) and v >= 0, "a number ≥ 0")
    label_smoothing: float = _setting(0.0, "probability mass spread over the other classes",
                                      lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)")
    augment: bool = _setting(True, "random shifts and rotations of training images (the network is unchanged)",
                             _bool, "true or false")
    max_shift: float = _setting(2.0, "pixels, when augment", lambda v: _finite(v) and 0 <= v <= 8, "pixels in [0, 8]")
    max_rotate: float = _setting(10.0, "degrees, when augment", lambda v: _finite(v) and 0 <= v <= 45,
                                 "degrees in [0, 45]")
    seed: int = _setting(0, "weights init, shuffling and augmentation", *_int_in(0, MAX_SEED))
    split_seed: int = _setting(0, "the 50k/10k train/validation permutation (shared across runs)",
                               *_int_in(0, MAX_SEED))
    val_size: int = _setting(10_000, "images held out of the 60,000 for validation", *_int_in(1, 59_999))
    train_subset: int = _setting(0, "use only the first N training images (0 = all); smoke runs", *_int_in(0, 60_000))
    log_every: int = _setting(0, "steps between logged points (0 = four per epoch)", *_int_in(0, 2**31 - 1))
    device: str = _setting("auto", "auto picks cuda, then mps, then cpu", *_one_of(DEVICES), choices=DEVICES)
    precision: str = _setting("auto", "auto: bf16 autocast where the hardware has it, else fp32",
                              *_one_of(PRECISIONS), choices=PRECISIONS)
    channels_last: bool = _setting(True, "memory format; the same function, faster oneDNN kernels", _bool,
                                   "true or false")
    threads: int = _setting(0, "torch intra-op threads (0 = torch's default)", *_int_in(0, MAX_THREADS))
    fused_kernels: bool = _setting(True, "CPU training: conv1+pool+ReLU and pool2+ReLU as cnnlab's C kernels "
                                         "(built on first use; torch's operators without a C compiler)",
                                   _bool, "true or false")

    def __post_init__(self) -> None:
        for f in fields(self):
            check_field(f.name, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def setting(name: str) -> Mapping[str, Any]:
    """A TrainConfig field's help, rule ("ok"), accepted values in words ("accepts") and choices."""
    return {f.name: f.metadata for f in fields(TrainConfig)}[name]


def check_field(name: str, value: Any) -> None:
    """ConfigError naming the flag and what it accepts, unless `value` is valid for field `name`."""
    meta = setting(name)
    _check(meta["ok"](value), name.replace("_", "-"), value, meta["accepts"])


# Accuracy and training time of each preset: measured once, in BENCHMARKS.md § Headline numbers.
PRESETS: dict[str, dict[str, Any]] = {
    # One epoch: ≥ 99.0% test accuracy in seconds on a laptop CPU. Batch 128 gives twice the
    # optimizer steps of 256 in one epoch at about the same cost per image, and label smoothing 0.1
    # is worth ~0.2 points at this length (the seeds and the variants that fell short are in
    # benchmarks/FINDINGS-p11.md § 2; the measured figures in BENCHMARKS.md).
    "quick": dict(epochs=1, batch_size=128, lr=8e-3, label_smoothing=0.1, augment=False),
    # The report's default: five epochs, so that the curves of 1.1 show the learning (20 logged
    # points) and 2.1 judges trained filters, in about a minute for both networks on a 2-core CPU.
    "standard": dict(epochs=5, batch_size=256, lr=8e-3, label_smoothing=0.1, augment=False),
    # The best accuracy: augmentation (±2 px, ±10°) and 15 epochs.
    "full": dict(epochs=15, batch_size=256, lr=4e-3, label_smoothing=0.1, augment=True),
    # Seconds: only for smoke tests and notebooks on a tiny configuration.
    "smoke": dict(epochs=1, batch_size=128, lr=3e-3, augment=False, train_subset=4000),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The named preset, with `overrides` (None values are ignored) applied on top."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict(values)


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        shown = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else f"<a {value.bit_length()}-bit integer>"
        shown = shown if len(shown) <= 40 else shown[:37] + "…"      # a 4000-digit seed stays one short line
        raise ConfigError(f"invalid --{name} {shown}: expected {expected}")


# ---------------------------------------------------------------------------------------------
# Analysis defaults (parts 2 and 3 of the assignment, and the robustness study)
# ---------------------------------------------------------------------------------------------

# Defaults, all on the 0–255 pixel scale. Chosen by measurement on the 1-epoch test-fixture model
# and a 3-epoch model (the `quick` preset before it became 2 epochs); measurements in BENCHMARKS.md:
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
REGULARIZED: dict[str, Any] = dict(step_size=10_000.0, clip=True, l2=0.05, blur_every=4, blur_sigma=0.5, jitter=1)


BETAS = (0.0, 0.001, 0.003, 0.01, 0.03)   # step_size·β must stay below 392 (see adversarial)
EPS_FGSM = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
EPS_PGD = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
PGD_STEPS = 20           # iterations
PGD_ALPHA_PER_EPS = 2.5 / PGD_STEPS   # α = 2.5·ε/steps: can walk across the ball 2.5× (Madry et al.)
PATCH_SIZES = (1, 2, 3, 4, 5)      # the assignment: "a square of size anywhere between 1 to 5 pixels"
STROKE_THRESHOLD = 0.5             # pixel value on the [0, 1] scale above which a pixel is "stroke"


@dataclass(frozen=True)
class AnalysisConfig:
    """How much analysis the report runs (the `quick`/`full` presets set these)."""
    n_random_images: int = 24        # random test images shown with true/predicted labels (1.2)
    activation_images: int = 2       # test images whose feature maps are shown (2.3)
    occlusion_images: int = 3        # test images with full occlusion maps (2.4)
    meaningful_n_behaviour: int = 500  # test images for the interventions of the 2.4 experiment
    meaningful_n_occlusion: int = 50   # of them, (marked, correctly classified) images occluded in 2.4
    synth_steps: int = 200           # gradient steps for class models (3.1)
    adv_steps: int = 200             # gradient steps for targeted fakes (3.2)
    adv_source_digit: int = 2        # the assignment's example: an image of 2 classified as 5
    robustness_n: int = 1000         # test images in the FGSM/PGD robustness curves
    pgd_steps: int = 10
    # 3.1.3's judge network, when the report trained no plain network of another seed (--seeds 1):
    # a plain network trained for the purpose with seed + 1 and this preset ("same": the maker's
    # own training config), or None: the report's other network (same seed, the other
    # architecture). "quick" (1 epoch, ≈ 99.1% test accuracy) costs ≈ 4 s on the 2-core CPU where
    # the maker's `full` preset would cost ≈ 60 s, and judged the full-preset maker's class models
    # exactly as a full-preset judge did (natural 10/10, plain 0/10 readable; BENCHMARKS.md).
    judge_preset: str | None = None

    def __post_init__(self) -> None:
        if self.judge_preset not in (None, "same", *PRESETS):   # refused before any training
            raise ConfigError(f"unknown preset {self.judge_preset!r} for the judge; choose one of "
                              f"{', '.join(PRESETS)}, 'same' or None")


ANALYSIS_PRESETS = {
    "smoke": AnalysisConfig(n_random_images=16, activation_images=1, occlusion_images=1,
                            meaningful_n_behaviour=150, meaningful_n_occlusion=20,
                            synth_steps=60, adv_steps=60, robustness_n=200, pgd_steps=5, judge_preset="same"),
    "quick": AnalysisConfig(judge_preset="quick"),
    "standard": AnalysisConfig(judge_preset="quick", robustness_n=500),
    "full": AnalysisConfig(occlusion_images=4, robustness_n=2000, pgd_steps=20, judge_preset="quick"),
}
