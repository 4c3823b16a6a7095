"""Checks that a verdict's answer states only numbers it carries (shared by the verdict tests)."""

from __future__ import annotations

import math
import re

# A number as printed: optional sign (ASCII or Unicode minus), digits with thousands commas, decimals.
NUMBER = re.compile(r"(?<![\w.])[+\-−]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])[+\-−]?\d+(?:\.\d+)?(?:e[+\-]?\d+)?")


def _flatten(v) -> list[float]:
    if isinstance(v, dict):
        return [x for k in v for x in _flatten(v[k])]
    if isinstance(v, (list, tuple)):
        return [x for i in v for x in _flatten(i)]
    if isinstance(v, bool):
        return []
    if isinstance(v, (int, float)) and math.isfinite(v):
        return [float(v)]
    return []


def unbacked_numbers(answer: str, numbers: dict) -> list[str]:
    """Numbers in `answer` that no value in `numbers` (as is, or ×100 for a percentage, or their
    difference from 1 ×100) rounds to at the printed precision. Layer names (conv1) are skipped."""
    values = _flatten(numbers)
    missing = []
    for tok in NUMBER.findall(answer):
        t = float(tok.replace(",", "").replace("−", "-"))
        mant, _, exp = tok.partition("e")
        decimals = len(mant.split(".")[1]) if "." in mant else 0
        tol = 0.5 * 10 ** (-decimals + (int(exp) if exp else 0)) + 1e-300
        candidates = [c for v in values for c in (v, 100 * v, 100 * (v - 1))]
        if not any(abs(c - t) <= tol or abs(abs(c) - abs(t)) <= tol for c in candidates):
            missing.append(tok)
    return missing
