"""Peer review: reading a 1-5 score out of a reviewer's reply (the acceptance rule is the paper's: fair/paper.py).

The paper asks for "[5]" and takes the last bracketed number, else the last number anywhere, which turns
"the answer is 145" into a score of 145 (one 83 appears in its published file). We read only what is plainly
a score, and the reviewer's final verdict decides: of all the scores below, the one that ends last in the
reply, whatever its form. Reasoning comes before the verdict, so a form that is plainer but earlier ("the
answer is [5] apples ... Score: 1") does not win, as it did when forms were tried in a fixed order.
    [n], [n/5], [[n]]                              "... so I give it [4]."
    \\boxed{n}                                      reasoning models box their final answer
    n/5, "n out of 5", not part of a sum           "4/5", "2 out of 5." (not "3/5 of the apples", "3/5 = 0.6")
    a "score"/"rating"/"grade" label, then n       "Score: 3.5", "rating of 4", "**Score:** 4/5"
    a reply that is only a number                  "4"
A reasoning model's thinking (<think>...</think>, or an unclosed <think> when the reply was cut off) is left
out: only what it concluded counts. A number on another scale ("8/10") is no score. A last score outside 1..5
makes the reply unparseable (None), never a number, even when an earlier one was in range.
"""

from __future__ import annotations

import re

NUMBER = r"(\d+(?:\.\d+)?)"
OUT_OF_FIVE = r"\s*(?:/|out\s+of)\s*5(?:\.0)?(?!\.?\d)"
OTHER_SCALE = r"\s*(?:/|out\s+of)\s*\d"
SCORE = rf"{NUMBER}(?:{OUT_OF_FIVE}|(?!{OTHER_SCALE}))"  # a number, and no other scale after it
ARITHMETIC = r"[=+*×÷−-]"
VERDICT = re.compile("|".join((
    rf"\[\s*{NUMBER}(?:{OUT_OF_FIVE})?\s*\]",
    rf"\\boxed\s*\{{\s*{SCORE}\s*\}}",
    # A bare n/5 is a score only when it is no fraction of something ("3/5 of") and no term of a sum.
    rf"(?<![\d.])(?<!{ARITHMETIC})(?<!{ARITHMETIC}\s){NUMBER}{OUT_OF_FIVE}(?!\s*(?:of\b|{ARITHMETIC}))",
    rf"\b(?:score|rating|grade)\b[^0-9\n]{{0,20}}?{SCORE}",
)), re.IGNORECASE)
ONLY_NUMBER = re.compile(rf"^\W*{NUMBER}\W*$")
THINKING = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)


def parse_review_score(text: str | None) -> float | None:
    if not text:
        return None
    text = THINKING.sub(" ", text)
    verdicts = list(VERDICT.finditer(text))
    if verdicts:
        last = max(verdicts, key=lambda m: (m.end(), m.start()))
        score = float(next(g for g in last.groups() if g is not None))
    elif match := ONLY_NUMBER.match(text):
        score = float(match[1])
    else:
        return None
    return score if 1 <= score <= 5 else None
