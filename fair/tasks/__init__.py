"""Task registry: every module in this folder defines one `TASK = Task(...)`; adding a task is adding a file.

A task says where its data lives (local files in the layout of `shared/data`, or a Hugging Face hub name),
how one row becomes an `Example`, how the student is prompted, and how an answer is graded. Mining and
evaluation both call `Task.grade`, so the two stages can never disagree on what counts as a mistake.

A task also says how the paper (arXiv 2410.03663) shows it: the `paper_*` fields, which fair/paper.py reads so
that no module outside this folder branches on a task's name. Their defaults fit a task whose question stands
alone and whose gold is a short answer (SVAMP); a task that differs declares it in its own file.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from fair.config import REPO_ROOT
from fair.errors import FairError
from fair.grading import Grade, grade_number, grade_option, grade_yes_no

AnswerType = Literal["number", "yesno", "option"]
# What `Example.solution` holds: a worked solution, one step a line, ending in "#### <answer>" (GSM8K); the
# equation that gives the answer (SVAMP); facts that decide it (StrategyQA); nothing (LogiQA).
SolutionForm = Literal["worked", "equation", "facts", "none"]
OPTION_LETTERS = "ABCD"
PAPER_YES_NO = {"yes": "true", "no": "false"}  # the paper writes a yes/no gold or answer as "true"/"false"
PAPER_INSTRUCTION = "Answer the following question. Let's think step by step."


@dataclass(frozen=True)
class Example:
    id: str  # stable id: the dataset's own when it has one (SVAMP `chal-777`), else "<split>-<row>"
    index: int  # row number in the split, which is the id the paper's files use
    split: str
    question: str
    gold: str  # canonical answer: "145" / "yes" / "B"
    solution: str = ""  # reference reasoning where the dataset has one (GSM8K solution, StrategyQA facts)
    context: str = ""  # LogiQA passage
    options: tuple[str, ...] = ()  # LogiQA options, without their "A." prefixes


@dataclass(frozen=True)
class Task:
    name: str
    hub_id: str  # what the paper loads with `datasets.load_dataset`
    answer_type: AnswerType
    splits: tuple[str, ...]
    read_local: Callable[[Path, str], list[dict[str, Any]]]  # (task dir, split) -> rows shaped like the hub's
    to_example: Callable[[dict[str, Any], str, int], Example]  # (row, split, row number) -> Example
    prompt: Callable[[Example], str]  # our student prompt: asks for a final line we can grade
    paper_prompt: Callable[[Example], str]  # the paper's prompt, for parity runs
    hub_config: str | None = None
    local_dir: str = ""  # folder name under the data dir; defaults to the task name
    version: int = 1  # bump when prompts or grading change, so caches and results are not mixed up
    aliases: tuple[str, ...] = field(default=())
    solution_form: SolutionForm = "none"  # what Example.solution holds (the offline committee writes from it)
    # How the paper shows the task (fair/paper.py):
    paper_gold: Callable[[Example], str] | None = None  # its files' gold_answer; None: ours (an option as its index 0-3)
    paper_hint: Callable[[Example], str] | None = None  # the gold in its training feedback prompt; None: paper_gold
    paper_instruction: str = PAPER_INSTRUCTION  # its training rationale prompt's "### Instruction"
    paper_shows_prompt: bool = False  # its feedback, review and training prompts show paper_prompt, not the bare question
    paper_match_by_question: bool = False  # its mistake files match the split by question text, not by row (`id`)

    def grade(self, text: str, example: Example) -> Grade:
        if self.answer_type == "number":
            return grade_number(text, example.gold)
        if self.answer_type == "yesno":
            return grade_yes_no(text, example.gold)
        return grade_option(text, example.options, example.gold)

    def load(self, split: str, data_dir: str | Path | None = None) -> list[Example]:
        if split not in self.splits:
            raise FairError(f"task {self.name!r} has no split {split!r} (choose from {', '.join(self.splits)})")
        rows = self._rows(split, data_dir)
        return [self.to_example(row, split, i) for i, row in enumerate(rows)]

    def _rows(self, split: str, data_dir: str | Path | None) -> list[dict[str, Any]]:
        explicit = data_dir is not None
        task_dir = Path(data_dir or default_data_dir()) / (self.local_dir or self.name)
        if not task_dir.is_dir():
            if explicit:
                raise FairError(f"data directory {task_dir} does not exist (task {self.name!r})")
            return self._hub_rows(split)
        try:
            return self.read_local(task_dir, split)
        except MissingDataFile:
            if explicit:  # the user pointed at this folder: never swap in other data behind their back
                raise
            return self._hub_rows(split)

    def _hub_rows(self, split: str) -> list[dict[str, Any]]:
        try:
            import datasets
        except ImportError:
            raise FairError(
                f"no local data for {self.name!r} under {default_data_dir()} and the `datasets` package is not "
                f"installed to fetch {self.hub_id}: pass --data-dir or `pip install datasets`"
            ) from None
        try:
            ds = datasets.load_dataset(self.hub_id, self.hub_config, split=split)
        except Exception as e:  # network, auth and schema errors all end here; say which dataset failed
            raise FairError(f"could not load {self.hub_id} split {split!r} from the hub: {e}") from None
        return [dict(row) for row in ds]


class MissingDataFile(FairError):
    """A split's file is absent from a local data folder (e.g. LogiQA's Train.txt, which is not shipped)."""


def default_data_dir() -> Path:
    """$FAIR_DATA_DIR, else the `shared/data` folder that sits beside a checkout of this repository."""
    if env := os.environ.get("FAIR_DATA_DIR"):
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data"


def require_field(row: dict[str, Any], key: str, where: str) -> Any:
    """A missing or empty field is a one-line error that names the record."""
    value = row.get(key)
    if value is None or value == "":
        raise FairError(f"{where}: missing field {key!r}")
    return value


@cache
def registry() -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_"):  # helpers shared by task files, not tasks
            continue
        task = importlib.import_module(f"{__name__}.{module.name}").TASK
        for name in (task.name, *task.aliases):
            tasks[name.lower()] = task
    return tasks


def get_task(name: str) -> Task:
    tasks = registry()
    if (task := tasks.get(name.lower())) is not None:
        return task
    close = difflib.get_close_matches(name.lower(), tasks, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    names = sorted({t.name for t in tasks.values()})
    raise FairError(f"unknown task {name!r} (known: {', '.join(names)}){hint}")


def task_names() -> list[str]:
    return sorted({t.name for t in registry().values()})
