"""A data recipe's two committee-side choices, as the committee (gen/committee/) records them and training
(train/data.py) and the cost of a recipe's data (fair/prices.py) read them.

Filter: which rationales qualify for training.
    review       the peers accept it (the paper's): every rationale is reviewed by the other T - 1 teachers
    gold         the task's grader, the one that mined the mistakes, finds the gold answer in it: free, no review
    gold+review  both: only rationales that pass the gold check are sent for review (fewer review requests)
    none         every whole rationale
A committee record says which filter its run used (`filter`, "review" for records written before it existed and
for the paper's files) and, per rationale, `gold` (the gold check) and `accepted` (qualifies under that filter).
A run under `gold` or `none` sends no review request: T(T + 1) requests a mistake become 2T; under gold+review the
rationales that fail the gold check are not reviewed. Training may ask for a filter only where the records hold
what it needs (`trainable`): `review` needs every usable rationale reviewed (a `review` run), `gold+review` at
least the gold-passing ones (a `review` or `gold+review` run); `gold` and `none` read any records.

Samples: with K > 1 each teacher writes K rationales a mistake. The first keeps the teacher's name as its key in
`rationales` (so a one-sample record is what it always was), the k-th (k >= 2) is keyed "<teacher>#<k>": each
sample is reviewed, gold-checked and accepted on its own, and belongs to its teacher (fair/records.py's
`sample_key` and `teacher_of`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from fair.errors import FairError
from fair.records import StudentAnswer
from fair.tasks import Task

Filter = Literal["review", "gold", "gold+review", "none"]
FILTERS: tuple[Filter, ...] = ("review", "gold", "gold+review", "none")
PAPER_FILTER: Filter = "review"  # what records without a `filter` field ran (the paper's, and ours before it)
# What a committee runs unless told: the gold check is free and sends no review request, and over three seeds of
# the paper's files review bought nothing measurable for 2.8x the data's cost (docs/results.md, "Recipes").
DEFAULT_FILTER: Filter = "gold"


def check_filter(filter: str) -> Filter:
    if filter not in FILTERS:
        raise FairError(f"unknown filter {filter!r}: choose {', '.join(FILTERS)}")
    return filter  # type: ignore[return-value]


def reviews(filter: Filter) -> bool:
    return "review" in filter


def gold_checks(filter: Filter) -> bool:
    return "gold" in filter


def qualifies(filter: Filter, gold: bool, peers_accept: bool) -> bool:
    """Whether a whole (usable) rationale qualifies: `peers_accept` is read only where the filter reviews."""
    return (gold or not gold_checks(filter)) and (peers_accept or not reviews(filter))


def filter_rule(filter: Filter, threshold: object) -> str:
    """What `filter` accepts, in words (the model and dataset cards say it)."""
    peers = f"the mean of its peers' valid review scores is above {threshold}"
    return {"review": f"review: a rationale is accepted when {peers}",
            "gold": "gold: a rationale is accepted when the task's grader finds the gold answer in it (no review)",
            "gold+review": f"gold+review: a rationale is accepted when it has the gold answer and {peers}",
            "none": "none: every whole rationale is accepted (no review)"}[filter]


def recorded_filter(record: dict) -> Filter:
    return record.get("filter", PAPER_FILTER)


def run_filter(recorded: Iterable[Filter], where: str) -> Filter:
    """The one filter a committee run's records were written under (`recorded_filter` of each; "review" for the
    paper's files or no records): what training and export follow unless told otherwise."""
    filters = set(recorded) or {PAPER_FILTER}
    if len(filters) > 1:
        raise FairError(f"{where}: records written under several filters ({', '.join(sorted(filters))}); "
                        f"pass --filter")
    return filters.pop()


def trainable(train_filter: Filter, committee_filter: Filter) -> bool:
    """Whether records written under `committee_filter` hold what `train_filter` needs (the module docstring)."""
    if train_filter == "review":
        return committee_filter == "review"
    if train_filter == "gold+review":
        return committee_filter in ("review", "gold+review")
    return True


def finds_gold(task: Task, mistake: StudentAnswer, text: str | None) -> bool:
    """The gold check: the task's grader (as mining grades the student) finds the gold answer in `text`."""
    return text is not None and task.grade(text, mistake.example()).correct is True
