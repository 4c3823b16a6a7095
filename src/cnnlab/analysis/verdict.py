"""A verdict: the answer to one of the assignment's judgment questions, with its numbers and rule.

Every answer sentence of the report that states a finding ("batch-norm improved accuracy", "the
images do not look like digits") comes from one function that returns a Verdict. The sentence is
worded from `numbers` by `rule`, so a test can feed inputs where the rule must come out each way,
and results.json carries all four fields for every verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Verdict:
    id: str                      # which answer: "1.6.accuracy", "3.1.3", ...
    key: str                     # the machine verdict: "yes", "no", "inconclusive", ...
    answer: str                  # the sentence(s) shown in the report (plain text, not HTML)
    rule: str                    # the stated rule, thresholds included
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "key": self.key, "answer": self.answer, "rule": self.rule,
                "numbers": _jsonable(self.numbers)}


def _jsonable(v: Any) -> Any:
    """numbers as plain JSON values (NumPy scalars → Python, non-finite floats → None)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
