"""Peer review: reading a 1-5 score out of a reviewer's reply, and the acceptance rule.

The paper asks for "[5]" and takes the last bracketed number, else the last number anywhere, which turns
"the answer is 145" into a score of 145 (one 83 appears in its published file). We accept only what is
plainly a score, in this order, and anything else is "unparseable" (None), never a number:
    1. the last [n] or [n/5]                       "... so I give it [4]."
    2. n/5 or "n out of 5"                         "Score: 4/5"
    3. a "score"/"rating"/"grade" label then n     "Score: 3.5", "rating of 4"
    4. a reply that is only a number               "4"
Scores outside 1..5 are unparseable too.
"""

from __future__ import annotations

import re

NUMBER = r"(\d+(?:\.\d+)?)"
BRACKETED = re.compile(rf"\[\s*{NUMBER}\s*(?:/\s*5(?:\.0)?)?\s*\]")
OUT_OF_FIVE = re.compile(rf"{NUMBER}\s*(?:/|out of)\s*5(?:\.0)?\b", re.IGNORECASE)
LABELLED = re.compile(rf"\b(?:score|rating|grade)\b[^0-9\n]{{0,20}}?{NUMBER}", re.IGNORECASE)
ONLY_NUMBER = re.compile(rf"^\W*{NUMBER}\W*$")


def parse_review_score(text: str | None) -> float | None:
    if not text:
        return None
    for pattern in (BRACKETED, OUT_OF_FIVE, LABELLED, ONLY_NUMBER):
        matches = pattern.findall(text)
        if matches:
            score = float(matches[-1])
            return score if 1 <= score <= 5 else None
    return None


def accept(scores: list[float | None], threshold: float) -> tuple[float | None, bool]:
    """Mean of the valid scores and whether it is above the threshold (the paper: > 3)."""
    valid = [s for s in scores if s is not None]
    if not valid:
        return None, False
    mean = sum(valid) / len(valid)
    return mean, mean > threshold
