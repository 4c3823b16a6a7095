"""A verdict: the answer to one of the assignment's judgment questions, with its numbers and rule.

Every answer sentence of the report that states a finding ("batch-norm improved accuracy", "the
images do not look like digits") comes from one function that returns a Verdict. The sentence is
worded from `numbers` by `rule`, so a test can feed inputs where the rule must come out each way,
and results.json carries all four fields for every verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..output import jsonable


@dataclass(frozen=True)
class Verdict:
    id: str                      # which answer: "1.6.accuracy", "3.1.3", ...
    key: str                     # the machine verdict: "yes", "no", "inconclusive", ...
    answer: str                  # the sentence(s) shown in the report (plain text, not HTML)
    rule: str                    # the stated rule, thresholds included
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "key": self.key, "answer": self.answer, "rule": self.rule,
                "numbers": jsonable(self.numbers)}
