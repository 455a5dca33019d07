"""Decontamination: which questions of one set (training data) overlap the questions of another (a test split).

Overlap is counted in word n-grams: a question's words are its lower-cased runs of letters, digits and
underscores (regex \\w+), and its n-grams every run of N = 8 consecutive words (a question of fewer words has none,
and so never overlaps: too short to tell a copy from a coincidence). A question is *contaminated* by the other set
when more than THRESHOLD = half of its n-grams occur anywhere in the other set's questions (their n-grams pooled:
a variation of a problem often takes its sentences from several others). Measured on SVAMP (its 700 train and 300
test questions, tests/test_recipes.py): 227 test questions share at least one 8-gram with the train split, and
29 share more than half of theirs.

Training (train/train.py, `decontaminate`) drops every example whose question is contaminated by the test split
of the task it is evaluated on, and counts them in data_report.json; evaluation (eval/evaluate.py) also reports
the accuracy on the *clean* test questions, those not contaminated by the train split.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fair.records import StudentAnswer
from fair.tasks import Example, Task

N = 8
THRESHOLD = 0.5  # contaminated above this share of a question's n-grams
EVAL_SPLIT = "test"  # what training is checked against: the split `fair eval` answers by default (every task has one)
WORD = re.compile(r"\w+")

Gram = tuple[str, ...]


def ngrams(text: str, n: int = N) -> set[Gram]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class Overlap:
    shared: int  # the question's n-grams found in the other set
    total: int  # its n-grams

    @property
    def share(self) -> float:
        return self.shared / self.total if self.total else 0.0

    @property
    def contaminated(self) -> bool:
        return self.share > THRESHOLD


class Index:
    """The pooled n-grams of a set of questions (a test split: a few thousand questions, a few MB)."""

    def __init__(self, questions: Iterable[str], n: int = N):
        self.n = n
        self.grams: set[Gram] = set().union(*(ngrams(q, n) for q in questions))

    def overlap(self, question: str) -> Overlap:
        grams = ngrams(question, self.n)
        return Overlap(len(grams & self.grams), len(grams))

    def contaminated(self, question: str) -> bool:
        return self.overlap(question).contaminated


# ----------------------------------------------------------------------------------------------------------
# Uses: training drops contaminated mistakes, evaluation scores the clean test questions apart


def example_text(example: Example | StudentAnswer) -> str:
    """What is compared: the question with its passage (LogiQA's), which a copy would share too."""
    return f"{example.context}\n{example.question}" if example.context else example.question


def drop_contaminated(records: list[dict], task: Task, data_dir: str | Path | None = None) -> tuple[list[dict], dict]:
    """Committee records (train/data.py's) without those whose mistake's question is contaminated by the task's
    test split, and what was checked and dropped (for data_report.json)."""
    index = Index(example_text(e) for e in task.load(EVAL_SPLIT, data_dir))
    dropped = [r["id"] for r in records
               if index.contaminated(example_text(StudentAnswer.from_json(r["mistake"], f"record {r['id']}")))]
    gone = set(dropped)
    report = {"against": f"{task.name} {EVAL_SPLIT}", "n": index.n, "threshold": THRESHOLD, "checked": len(records),
              "dropped": len(dropped), "dropped_ids": dropped}
    return [r for r in records if r["id"] not in gone], report


def clean_ids(task: Task, split: str, data_dir: str | Path | None = None) -> set[str]:
    """The ids of `split`'s examples that the task's train split does not contaminate (all of them for train)."""
    examples = task.load(split, data_dir)
    if split == "train":
        return {e.id for e in examples}
    index = Index(example_text(e) for e in task.load("train", data_dir))
    return {e.id for e in examples if not index.contaminated(example_text(e))}

