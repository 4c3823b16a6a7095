"""Question 1.6: does batch-normalization change test accuracy, and training time? The verdicts.

The runs themselves are trained by `cnnlab.train`; these functions only judge their numbers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..stats import paired_ci
from .verdict import Verdict

if TYPE_CHECKING:
    import os

    from ..runs import Run

ALPHA = 0.05          # significance level of the exact McNemar test (one seed)
SUGGESTED_SEEDS = 3   # an inconclusive run with fewer seeds suggests this many
SAME_TIME = 0.05      # per-epoch times within ±5% of each other count as the same

ACCURACY_RULE = (
    "With several seeds: 'yes' when the 95% paired-t confidence interval of the test-accuracy difference "
    "(batch-norm − plain, same seeds) lies entirely above 0, 'no' when it lies entirely below 0. With one "
    f"seed: the exact McNemar test on the test images decides, 'yes' or 'no' when p < {ALPHA:g} (by the sign "
    "of the difference). Otherwise 'inconclusive'.")

TIME_RULE = (
    f"Per epoch: batch-norm is 'slower' when its mean epoch time is more than {100 * SAME_TIME:.0f}% above the "
    f"plain network's, 'faster' when more than {100 * SAME_TIME:.0f}% below, otherwise 'same'. To accuracy: "
    "'sooner' when the mean training time until validation accuracy first reaches the plain model's final "
    "validation accuracy is lower for batch-norm, 'not sooner' when it is not, 'not reached' when batch-norm "
    "never reaches it in some seed. The key is '<per epoch>/<to accuracy>'.")


def accuracy_verdict(acc_plain: Sequence[float], acc_bn: Sequence[float], mcnemar: Mapping) -> Verdict:
    """1.6 "Does batch-normalization improve the test accuracy?" from the test accuracies of the
    plain and batch-norm runs (same seeds, in order) and `stats.mcnemar` on the first seed."""
    n = len(acc_plain)
    if n == 0 or len(acc_bn) != n:
        raise ConfigError(f"need the same number (≥ 1) of plain and batch-norm accuracies; got {n} and {len(acc_bn)}")
    diff = paired_ci(list(acc_plain), list(acc_bn))
    d = 100 * diff["mean"]                                 # percentage points
    lo, hi = 100 * diff["ci_low"], 100 * diff["ci_high"]
    p = float(mcnemar["p_value"])
    if n > 1:
        decided = lo > 0 or hi < 0
        evidence = f"95% CI of the difference over {n} seeds [{lo:+.2f}, {hi:+.2f}] points"
    else:
        decided = p < ALPHA
        evidence = (f"exact McNemar p = {p:.3g} on the test images: {mcnemar['only_b']} right only with "
                    f"batch-norm, {mcnemar['only_a']} only without")
    if decided and d > 0:
        key, head = "yes", f"Yes: batch-normalization improved test accuracy in this run, by {d:.2f} points"
    elif decided and d < 0:
        key, head = "no", f"No: batch-normalization lowered test accuracy in this run, by {-d:.2f} points"
    else:
        key = "inconclusive"
        head = (f"Inconclusive: the difference of {d:+.2f} points is within what "
                + ("seed-to-seed and test-sampling noise produce" if n > 1 else "test-sampling noise produces"))
    answer = f"{head} ({evidence})."
    if key == "inconclusive":
        answer += " This run does not show that batch-normalization changes test accuracy"
        answer += f" (run with more seeds, e.g. --seeds {SUGGESTED_SEEDS}, to narrow it down)." if n < SUGGESTED_SEEDS else "."
    numbers = {"seeds": n, "diff_points": d, "ci_low_points": lo, "ci_high_points": hi, "mcnemar_p": p,
               "only_plain": int(mcnemar["only_a"]), "only_bn": int(mcnemar["only_b"]), "alpha": ALPHA,
               "suggested_seeds": SUGGESTED_SEEDS,
               "acc_plain": list(acc_plain), "acc_bn": list(acc_bn)}
    return Verdict("1.6.accuracy", key, answer, ACCURACY_RULE, numbers)


def time_verdict(epoch_s_plain: Sequence[float], epoch_s_bn: Sequence[float], reach: Sequence[Mapping]) -> Verdict:
    """1.6 "Does it affect training time?" from the mean epoch seconds of each run and, per seed,
    `reach` = {"plain_s", "bn_s"}: training seconds until validation accuracy first reached the
    plain model's final validation accuracy (None: never)."""
    if not epoch_s_plain or len(epoch_s_bn) != len(epoch_s_plain) or len(reach) != len(epoch_s_plain):
        raise ConfigError("need one epoch time per seed for both networks and one reach entry per seed")
    tp, tb = float(np.mean(epoch_s_plain)), float(np.mean(epoch_s_bn))
    ratio = tb / tp
    per_epoch = "slower" if ratio > 1 + SAME_TIME else "faster" if ratio < 1 - SAME_TIME else "same"
    text = {"slower": f"Per epoch, batch-normalization is slower: ×{ratio:.2f} the plain network's time "
                      f"({tb:.2f} s against {tp:.2f} s; the two normalization layers add their own forward and "
                      f"backward work).",
            "faster": f"Per epoch, batch-normalization is faster: ×{ratio:.2f} the plain network's time "
                      f"({tb:.2f} s against {tp:.2f} s).",
            "same": f"Per epoch, the two take the same time within ±{100 * SAME_TIME:.0f}% "
                    f"(×{ratio:.2f}: {tb:.2f} s against {tp:.2f} s)."}[per_epoch]
    numbers: dict = {"epoch_s_plain": tp, "epoch_s_bn": tb, "ratio": ratio, "same_band": SAME_TIME,
                     "seeds": len(reach)}
    to_acc, reach_text = _reach(reach, numbers)
    return Verdict("1.6.time", f"{per_epoch}/{to_acc}", text + reach_text, TIME_RULE, numbers)


def _reach(reach: Sequence[Mapping], numbers: dict) -> tuple[str, str]:
    """The time-to-accuracy part of a time verdict: its key ('sooner', 'not sooner', 'not
    reached') and sentence; its numbers are added to `numbers`."""
    reached = [r for r in reach if r.get("bn_s") is not None and r.get("plain_s") is not None]
    numbers["seeds_reached"] = len(reached)
    if len(reached) == len(reach):
        rb = float(np.mean([r["bn_s"] for r in reached]))
        rp = float(np.mean([r["plain_s"] for r in reached]))
        to_acc = "sooner" if rb < rp else "not sooner"
        numbers.update(reach_s_bn=rb, reach_s_plain=rp)
        return to_acc, (f" To reach the plain model's final validation accuracy it needs {rb:.1f} s against {rp:.1f} s, "
                        + ("so it gets there sooner." if to_acc == "sooner" else "so it does not get there sooner in this run."))
    numbers["seeds_not_reached"] = len(reach) - len(reached)
    return "not reached", (f" It did not reach the plain model's final validation accuracy in {len(reach) - len(reached)} "
                           f"of {len(reach)} seed(s) within the same budget.")


# ---------------------------------------------------------------------------------------------
# Training time from every optimizer step (run.json timing.step_time_s, step_times.npy)
# ---------------------------------------------------------------------------------------------

CONFIDENCE = 0.95     # of the bootstrap interval of the median-step-time ratio
N_BOOT = 2000         # bootstrap replicates
TAIL = 0.10           # "the slowest 10% of steps": their share of the time shows what moves a mean

TIME_STEPS_RULE = (
    "Per optimizer step: r = median step time with batch-norm / median step time without (with several seeds, "
    f"the geometric mean of the per-seed ratios). Its {100 * CONFIDENCE:.0f}% interval comes from a seeded "
    f"bootstrap ({N_BOOT} replicates) that resamples each run's steps in blocks of ⌈√n⌉ consecutive steps (a slow "
    "stretch of the machine is resampled whole) and, with several seeds, the seeds too. 'slower' when the whole "
    f"interval lies above 1 + {SAME_TIME:g}, 'faster' when it lies below 1 − {SAME_TIME:g}, 'same' when it lies "
    f"within [1 − {SAME_TIME:g}, 1 + {SAME_TIME:g}], 'inconclusive' when it straddles a bound of that band (timing "
    "noise decides). The ratio of mean step times (what mean epoch times compare) is reported beside it, with the "
    f"answer the mean rule (beyond ±{100 * SAME_TIME:.0f}%: slower or faster) gives. With `reach`, the key is "
    "'<per step>/<to accuracy>' as in time_verdict: 'sooner', 'not sooner' or 'not reached'.")


def load_step_times(run: Run | str | os.PathLike[str]) -> np.ndarray | None:
    """The seconds of every timed optimizer step of a run (its step_times.npy, float64), or None
    for a run written before steps were timed. `run`: a run directory or a `runs.Run`."""
    from ..errors import RunError
    from ..schema import read_bytes_limited
    path = Path(getattr(run, "path", run)) / "step_times.npy"  # type: ignore[arg-type]  # a Run gives its .path
    if not path.is_file():
        return None
    raw = read_bytes_limited(path, 64 * 1024 * 1024, RunError, "step times file")
    try:
        t = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise RunError(f"{path} is damaged ({str(e)[:120]}); train the run again") from None
    if t.ndim != 1 or t.dtype.kind != "f" or not np.isfinite(t).all() or (t < 0).any():
        raise RunError(f"{path} is not a list of step times (shape {list(t.shape)}, dtype {t.dtype})")
    return t.astype(np.float64)


def _per_seed(times, name: str) -> list[np.ndarray]:
    """One array of step seconds per seed from one array (one seed) or a sequence of arrays."""
    if isinstance(times, np.ndarray) and times.ndim == 1:
        runs = [times]
    elif len(times) and np.ndim(times[0]) == 0:
        runs = [np.asarray(times)]
    else:
        runs = [np.asarray(t) for t in times]
    out = []
    for t in runs:
        t = np.asarray(t, dtype=np.float64)
        if t.ndim != 1 or t.size < 1 or not np.isfinite(t).all() or (t <= 0).any():
            raise ConfigError(f"{name}: each seed needs a 1-D array of positive step seconds; got shape "
                              f"{list(t.shape)}")
        out.append(t)
    if not out:
        raise ConfigError(f"{name}: no step times")
    return out


def _block_medians(t: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
    """Medians of `n_boot` circular block-bootstrap resamples of `t` (blocks of ⌈√n⌉ steps)."""
    n = t.size
    block = max(1, math.ceil(math.sqrt(n)))
    m = math.ceil(n / block)
    offsets = np.arange(block)
    out = np.empty(n_boot)
    for i in range(0, n_boot, chunk):
        k = min(chunk, n_boot - i)
        starts = rng.integers(0, n, size=(k, m))
        idx = ((starts[:, :, None] + offsets) % n).reshape(k, m * block)[:, :n]
        out[i:i + k] = np.median(t[idx], axis=1)
    return out


def _per_step_key(lo: float, hi: float) -> str:
    if lo > 1 + SAME_TIME:
        return "slower"
    if hi < 1 - SAME_TIME:
        return "faster"
    if lo >= 1 - SAME_TIME and hi <= 1 + SAME_TIME:
        return "same"
    return "inconclusive"


def _tail_share(runs: list[np.ndarray]) -> float:
    """Share of the total time spent in each run's slowest TAIL of steps (all runs pooled)."""
    tail = total = 0.0
    for t in runs:
        k = max(1, int(round(TAIL * t.size)))
        tail += float(np.sort(t)[-k:].sum())
        total += float(t.sum())
    return tail / total


def time_verdict_steps(plain_step_s: np.ndarray | Sequence[Any], bn_step_s: np.ndarray | Sequence[Any],
                       reach: Sequence[Mapping] | None = None, *,
                       n_boot: int = N_BOOT, seed: int = 0) -> Verdict:
    """1.6 "Does it affect training time?" from the seconds of every optimizer step: one array
    per network (one seed) or one array per seed for each (same seeds, in order), e.g. from
    `load_step_times(run)`. The median is robust to a slow stretch of the machine, the mean (what
    mean epoch times compare) is not; both are reported. `reach` (optional, as in time_verdict)
    adds the time-to-accuracy part and key. The interval is a seeded bootstrap (TIME_STEPS_RULE)."""
    plain, bn = _per_seed(plain_step_s, "plain_step_s"), _per_seed(bn_step_s, "bn_step_s")
    if len(plain) != len(bn):
        raise ConfigError(f"need the step times of the same seeds for both networks; got {len(plain)} and {len(bn)}")
    if reach is not None and len(reach) != len(plain):
        raise ConfigError(f"need one reach entry per seed; got {len(reach)} for {len(plain)} seeds")
    if n_boot < 100:
        raise ConfigError(f"n_boot must be at least 100; got {n_boot}")
    seeds = len(plain)
    med_p = np.array([np.median(t) for t in plain])
    med_b = np.array([np.median(t) for t in bn])
    per_seed = med_b / med_p
    ratio = float(np.exp(np.mean(np.log(per_seed))))
    rng = np.random.default_rng(seed)
    log_r = np.stack([np.log(_block_medians(b, n_boot, rng) / _block_medians(p, n_boot, rng))
                      for p, b in zip(plain, bn)])                          # [seeds, n_boot]
    if seeds > 1:                                                           # resample the seeds too
        pick = rng.integers(0, seeds, size=(n_boot, seeds))
        boot = np.exp(log_r[pick, np.arange(n_boot)[:, None]].mean(axis=1))
    else:
        boot = np.exp(log_r[0])
    lo, hi = (float(v) for v in np.quantile(boot, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2]))
    key = _per_step_key(lo, hi)
    mean_p = float(np.mean([t.mean() for t in plain]))
    mean_b = float(np.mean([t.mean() for t in bn]))
    mean_ratio = mean_b / mean_p
    mean_key = "slower" if mean_ratio > 1 + SAME_TIME else "faster" if mean_ratio < 1 - SAME_TIME else "same"
    mp, mb = 1000 * float(np.mean(med_p)), 1000 * float(np.mean(med_b))
    numbers: dict = {
        "ratio": ratio, "ci_low": lo, "ci_high": hi, "confidence": CONFIDENCE, "same_band": SAME_TIME,
        "step_ms_plain": mp, "step_ms_bn": mb,
        "mean_step_ms_plain": 1000 * mean_p, "mean_step_ms_bn": 1000 * mean_b,
        "mean_ratio": mean_ratio, "mean_key": mean_key, "mean_disagrees": mean_key != key,
        "p10_ratio": float(np.mean([np.percentile(b, 10) for b in bn]) / np.mean([np.percentile(p, 10) for p in plain])),
        "p90_ratio": float(np.mean([np.percentile(b, 90) for b in bn]) / np.mean([np.percentile(p, 90) for p in plain])),
        "per_seed_ratio": [float(r) for r in per_seed], "seeds": seeds,
        "steps_plain": [int(t.size) for t in plain], "steps_bn": [int(t.size) for t in bn],
        "tail_fraction": TAIL, "tail_share_plain": _tail_share(plain), "tail_share_bn": _tail_share(bn),
        "n_boot": n_boot, "bootstrap_seed": seed}
    over = (f"{numbers['steps_plain'][0]:,} and {numbers['steps_bn'][0]:,} steps" if seeds == 1 else
            f"{seeds} seeds, per-seed ratios " + ", ".join(f"×{r:.2f}" for r in per_seed))
    times = (f"the median step takes {mb:.2f} ms with batch-normalization against {mp:.2f} ms without "
             f"(×{ratio:.2f}, {100 * CONFIDENCE:.0f}% interval ×{lo:.2f}–×{hi:.2f}; {over})")
    text = {"slower": f"Per step, batch-normalization is slower: {times}.",
            "faster": f"Per step, batch-normalization is faster: {times}.",
            "same": f"Per step, the two take the same time within ±{100 * SAME_TIME:.0f}%: {times}.",
            "inconclusive": f"Per step, timing noise decides: {times}. The interval reaches beyond "
                            f"±{100 * SAME_TIME:.0f}%, so these timings show neither the same time nor a "
                            f"difference."}[key]
    text += f" Mean step times give ×{mean_ratio:.2f} ({1000 * mean_b:.2f} against {1000 * mean_p:.2f} ms)"
    if mean_key != key:
        text += (f", so a comparison of mean epoch times would have answered '{mean_key}': the slowest "
                 f"{100 * TAIL:.0f}% of the steps take {100 * numbers['tail_share_bn']:.0f}% of the batch-norm "
                 f"network's time and {100 * numbers['tail_share_plain']:.0f}% of the plain one's, and a slow "
                 f"stretch moves a mean but not a median.")
    else:
        text += ", the same answer as the medians."
    if reach is None:
        return Verdict("1.6.time", key, text, TIME_STEPS_RULE, numbers)
    to_acc, reach_text = _reach(reach, numbers)
    return Verdict("1.6.time", f"{key}/{to_acc}", text + reach_text, TIME_STEPS_RULE, numbers)
