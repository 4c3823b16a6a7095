"""Question 1.6: does batch-normalization change test accuracy, and training time? The verdicts.

The runs themselves are trained by `cnnlab.train`; these functions only judge their numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..stats import paired_ci
from .verdict import Verdict

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
    reached = [r for r in reach if r.get("bn_s") is not None and r.get("plain_s") is not None]
    numbers: dict = {"epoch_s_plain": tp, "epoch_s_bn": tb, "ratio": ratio, "same_band": SAME_TIME,
                     "seeds": len(reach), "seeds_reached": len(reached)}
    if len(reached) == len(reach):
        rb = float(np.mean([r["bn_s"] for r in reached]))
        rp = float(np.mean([r["plain_s"] for r in reached]))
        to_acc = "sooner" if rb < rp else "not sooner"
        numbers.update(reach_s_bn=rb, reach_s_plain=rp)
        text += (f" To reach the plain model's final validation accuracy it needs {rb:.1f} s against {rp:.1f} s, "
                 + ("so it gets there sooner." if to_acc == "sooner" else "so it does not get there sooner in this run."))
    else:
        to_acc = "not reached"
        text += (f" It did not reach the plain model's final validation accuracy in {len(reach) - len(reached)} "
                 f"of {len(reach)} seed(s) within the same budget.")
        numbers["seeds_not_reached"] = len(reach) - len(reached)
    return Verdict("1.6.time", f"{per_epoch}/{to_acc}", text, TIME_RULE, numbers)
