"""Task registry: every module in this folder defines one `TASK = Task(...)`; adding a task is adding a file.
A task can also be declared in YAML, without Python: configs/tasks/<name>.yaml, or any file named by
`--task path.yaml` (fair/tasks/_declared.py); `get_task` finds both, the built-ins first.

A task says where its data lives (local files in the layout of `shared/data`, or a Hugging Face hub name),
how one row becomes an `Example`, how the student is prompted, and how an answer is graded. Mining and
evaluation both call `Task.grade`, so the two stages can never disagree on what counts as a mistake.
`Task.examples` reads a split one row at a time, so a corpus too large for memory streams through mining.

A task also says how the paper (arXiv 2410.03663) shows it: the `paper_*` fields, which fair/paper.py reads so
that no module outside this folder branches on a task's name. Their defaults fit a task whose question stands
alone and whose gold is a short answer (SVAMP); a task that differs declares it in its own file.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol

from fair.config import CONFIGS_DIR, REPO_ROOT
from fair.errors import FairError
from fair.grading import LETTERS, AnswerKind, Grade, grade
from fair.tasks._common import MissingDataFile, hub_rows
from fair.tasks._declared import load_declared

DECLARED_DIR = CONFIGS_DIR / "tasks"  # `--task NAME` finds NAME.yaml here
# What `Example.solution` holds: a worked solution, one step a line, ending in "#### <answer>" (GSM8K); the
# equation that gives the answer (SVAMP); facts that decide it (StrategyQA); nothing (LogiQA).
SolutionForm = Literal["worked", "equation", "facts", "none"]
OPTION_LETTERS = LETTERS  # the letters the option grader reads, A-D
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
    options: tuple[str, ...] = ()  # LogiQA's (or a declared option task's) options, without their "A." prefixes


class RowSource(Protocol):
    """Where a declared task's rows come from (fair/tasks/_declared.py's `Declared`): its own files or hub splits."""

    def rows(self, split: str) -> Iterable[dict[str, Any]]: ...  # a missing file is reported when called

    def describe(self) -> str: ...  # for `fair tasks`

    def definition(self) -> dict[str, Any]: ...  # the file's keys as they resolve: what a resumed run compares


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    hub_id: str = ""  # what the paper loads with `datasets.load_dataset`
    answer_type: AnswerKind  # which grader reads a reply (fair/grading.py)
    splits: tuple[str, ...]
    # (task dir, split) -> rows shaped like the hub's, read lazily where cheap; None where `source` reads them
    read_local: Callable[[Path, str], Iterable[dict[str, Any]]] | None = None
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
    # A declared task's (fair/tasks/_declared.py):
    answer_pattern: str | None = None  # regex tasks: the pattern whose last match in a reply is its answer
    source: RowSource | None = None  # its own files or hub splits; None: <data dir>/<local_dir>, else the hub

    def grade(self, text: str, example: Example) -> Grade:
        return grade(self.answer_type, text, example.gold, options=example.options, pattern=self.answer_pattern)

    def load(self, split: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[Example]:
        """The split's first `limit` examples (None: all), reading no row past them."""
        return list(islice(self.examples(split, data_dir), limit))

    def examples(self, split: str, data_dir: str | Path | None = None) -> Iterator[Example]:
        """The split's examples one at a time; a wrong split or a missing file is reported now, a bad row when
        it is read."""
        if split not in self.splits:
            raise FairError(f"task {self.name!r} has no split {split!r} (choose from {', '.join(self.splits)})")
        rows = self._rows(split, data_dir)
        return (self.to_example(row, split, i) for i, row in enumerate(rows))

    def definition(self) -> dict[str, Any]:
        """What makes the task's examples, prompts and grades, as plain YAML values: its version, and a declared
        task's keys (its file can be edited between two runs in one folder; a built-in's version is bumped)."""
        return {"version": self.version} | (self.source.definition() if self.source is not None else {})

    def describe_source(self) -> str:
        """Where the rows come from, for `fair tasks`."""
        if self.source is not None:
            return self.source.describe()
        return f"{self.local_dir or self.name}/ in the data folder, else hub {self.hub_id}"

    def _rows(self, split: str, data_dir: str | Path | None) -> Iterable[dict[str, Any]]:
        if self.source is not None:  # a declared task names its own files: the data folder is not where they are
            return self.source.rows(split)
        assert self.read_local is not None, f"task {self.name!r} has neither read_local nor source"
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

    def _hub_rows(self, split: str) -> Iterator[dict[str, Any]]:
        return hub_rows(self.hub_id, self.hub_config, split,
                        f"no local data for {self.name!r} under {default_data_dir()} (or --data-dir), and")


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
    """A built-in task by name or alias, else a declared one: `name` a path to a .yaml file, or
    configs/tasks/<name>.yaml."""
    tasks = registry()
    if (task := tasks.get(name.lower())) is not None:
        return task
    if name.endswith((".yaml", ".yml")):
        return declared_task(Path(name))
    if (path := DECLARED_DIR / f"{name}.yaml").is_file():
        return declared_task(path)
    close = difflib.get_close_matches(name.lower(), [*tasks, *declared_names()], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    names = [*sorted({t.name for t in tasks.values()}), *declared_names()]
    raise FairError(f"unknown task {name!r} (known: {', '.join(names)}){hint}")


def task_names() -> list[str]:
    """The built-in tasks' names."""
    return sorted({t.name for t in registry().values()})


def declared_names() -> list[str]:
    """The tasks declared in configs/tasks/, by their files' names."""
    return sorted(p.stem for p in DECLARED_DIR.glob("*.yaml"))


def declared_task(path: Path) -> Task:
    """The task a YAML file declares, checked (fair/tasks/_declared.py); read again only when the file changes."""
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise FairError(f"task file {path} not found") from None
    here = Path.cwd()
    shown = path.relative_to(here) if path.is_absolute() and path.is_relative_to(here) else path  # in messages
    return _declared_task(path.resolve(), shown, stamp)


@cache
def _declared_task(path: Path, shown: Path, stamp: int) -> Task:
    declared = load_declared(path, shown)
    if declared.name.lower() in registry():
        raise FairError(f"{shown}: a declared task cannot take the built-in task name {declared.name!r}; rename the file")
    spec = declared.spec
    return Task(
        name=declared.name, hub_id=spec.hub or "", hub_config=spec.hub_config, answer_type=spec.answer_kind,
        splits=tuple(spec.splits), to_example=lambda row, split, i: Example(**declared.example_fields(row, split, i)),
        prompt=declared.prompt, paper_prompt=declared.prompt,  # no paper shows it: its prompt is the paper's too
        answer_pattern=spec.answer_pattern, source=declared,
    )
