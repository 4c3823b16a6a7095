"""Small, exact statistics for the comparisons the report makes (no SciPy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence

# Two-sided 95% critical values of Student's t, df = 1..30 (standard table values).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    if n == 1:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


_Z975 = 1.959963984540054          # the normal distribution's 97.5% point


def t_critical(df: int) -> float:
    """Two-sided 95% critical value of Student's t with `df` degrees of freedom: the table up to
    30, then the Cornish–Fisher expansion in 1/df (Abramowitz & Stegun 26.7.5; error < 1e-5 there)."""
    if df < 1:
        return float("inf")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4))


def paired_ci(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean of b − a with a 95% confidence interval from the paired t distribution."""
    d = [y - x for x, y in zip(a, b)]
    m, s = mean_std(d)
    n = len(d)
    half = t_critical(n - 1) * s / math.sqrt(n) if n > 1 else float("inf")
    return {"n": n, "mean": m, "std": s, "ci_low": m - half, "ci_high": m + half}


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Exact McNemar test of two classifiers on the same test images.

    b = images only A gets right, c = images only B gets right; under "equally accurate" the
    discordant images split 50/50, so the two-sided p-value is a binomial tail.
    """
    b = sum(1 for x, y in zip(correct_a, correct_b) if x and not y)
    c = sum(1 for x, y in zip(correct_a, correct_b) if y and not x)
    n = b + c
    if n == 0:
        return {"only_a": 0, "only_b": 0, "p_value": 1.0}
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return {"only_a": b, "only_b": c, "p_value": min(1.0, 2 * tail)}


def wilson(k: int, n: int, z: float = _Z975) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n; (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # the bounds at k = 0 and k = n are exactly 0 and 1 (rounding would leave 1e-17 of them)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def rate(k: int, n: int) -> dict:
    """k of n as a rate with its 95% Wilson bounds (a JSON-ready dict)."""
    lo, hi = wilson(int(k), int(n))
    return {"k": int(k), "n": int(n), "rate": (k / n) if n else float("nan"), "lo": lo, "hi": hi}
