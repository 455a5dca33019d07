"""Tasks declared in YAML: your own questions, no Python. `--task NAME` finds configs/tasks/NAME.yaml, and
`--task path/to/NAME.yaml` reads any file; the task is called by its file's name (configs/tasks/arithmetic.yaml
shows one). A file says where the rows are (each split a local JSONL, CSV, TSV or Parquet file, or with `hub` a
split of a Hugging Face dataset), which fields hold the question and the gold answer, how a reply is graded
(`answer_kind`: one of fair/grading.py's graders) and, if not the default, the student's prompt. Each key is
documented once, beside its field in `TaskSpec`; docs/tasks.md shows them all.

Checked when loaded: an unknown key, an unknown kind, a pattern that does not compile, a template over what it
may not use: one line naming the file and the key. Checked when read: a row without a field the task needs, a
gold answer its kind cannot take, or an id an earlier row has, names the data file, the row (from 0) and the field.

Rows are read one at a time (CSV, TSV and JSONL a line at a time, Parquet a record batch at a time, a hub split
from the memory-mapped Arrow cache of `datasets`), so a corpus of millions of questions streams through
`fair mine`. fair/tasks/__init__.py makes a `Task` of a loaded file; this module imports nothing from it.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fair.config import (
    REPO_ROOT,
    Validated,
    field_default,
    field_doc,
    format_value,
    make_config,
    read_yaml_mapping,
)
from fair.errors import FairError
from fair.grading import LETTERS, AnswerKind, normalise_yes_no
from fair.jsonl import read_jsonl
from fair.tasks._common import answer_instruction, hub_rows, number_text, question_block

# "{name}" is a field (any characters but braces); "{{" and "}}" are literal braces.
FIELD_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


@dataclass
class TaskSpec(Validated):
    splits: dict  # each split's rows: a .jsonl, .csv, .tsv or .parquet file (relative to this file's folder) or, with `hub`, the name of the hub's split: `{train: train.csv, test: test.csv}`
    hub: str | None = None  # a Hugging Face dataset id: `splits` then maps each split to one of its splits
    hub_config: str | None = None  # the hub dataset's configuration (subset), where it has several
    question: str = "question"  # the field holding the question, or a template over fields: `"{context}\n\n{question}"`
    answer: str = "answer"  # the field holding the gold answer (option: a letter, or an index from 0)
    answer_kind: AnswerKind = "exact"  # the grader: number, yesno (yes/no or true/false), option (a letter A-D), exact (a string), regex (answer_pattern's match)
    options: str | tuple[str, ...] | None = None  # option: the fields holding options A, B, ... in order, or one field holding a list of 2-4 options
    answer_pattern: str | None = None  # regex: a reply's last match of this regular expression is its answer: the group named `answer`, else the first group that took part, else the whole match
    id: str | None = None  # the field holding each row's unique id (a resumed run matches answers by it); none: `<split>-<row>`
    prompt: str | None = None  # the student's prompt, a template over `{question}` (an option task's question with its lettered options); none: the question, then how to state the answer for the kind

    def validate(self) -> None:
        self._check_splits()
        question = template_fields(self.question) if "{" in self.question else [self.question]
        if not question or not all(question):
            raise FairError(f"question: name a field, or fields in braces, got {self.question!r}")
        if not self.answer:
            raise FairError("answer: name the field holding the gold answer")
        option, regex = self.answer_kind == "option", self.answer_kind == "regex"
        if option != (self.options is not None):
            raise FairError("options: an option task names the fields of its options" if option else
                            f"options: only an option task has options (answer_kind is {self.answer_kind})")
        if isinstance(self.options, tuple) and not 2 <= len(self.options) <= len(LETTERS):
            raise FairError(f"options: 2 to {len(LETTERS)} fields, one per letter, got {len(self.options)}")
        if regex != (self.answer_pattern is not None):
            raise FairError("answer_pattern: a regex task needs one" if regex else
                            f"answer_pattern: only a regex task has one (answer_kind is {self.answer_kind})")
        if self.answer_pattern is not None:
            try:
                pattern = re.compile(self.answer_pattern)
            except re.error as e:
                raise FairError(f"answer_pattern: not a valid regular expression ({e})") from None
            if pattern.search("") is not None:  # `\d*`: the last match in a reply could be the empty one at its end
                raise FairError("answer_pattern: it matches the empty string; make the answer required "
                                "(`+`, not `*`)")
        if self.prompt is not None and set(template_fields(self.prompt)) != {"question"}:
            raise FairError(f"prompt: a template over {{question}} and nothing else, got {self.prompt!r}")

    def _check_splits(self) -> None:
        if not self.splits:
            raise FairError("splits: name at least one split, e.g. {train: train.csv}")
        for split, source in self.splits.items():
            if not isinstance(split, str) or not isinstance(source, str) or not source:
                raise FairError(f"splits: {split!r} must map to a file or a hub split's name, got {source!r}")
            if self.hub is None and Path(source).suffix.lower() not in READERS:
                raise FairError(f"splits: {split}: {source!r} is not a {', '.join(READERS)} file")
        if self.hub is None and self.hub_config is not None:
            raise FairError("hub_config: only with hub")


def keys_table() -> str:
    """The keys of a task file as docs/tasks.md shows them, each key's text from its field here (checked by
    tests/test_tasks.py, so that the page never says other than the code)."""
    rows = ["| key | default | what |", "| --- | --- | --- |"]
    for f in dataclasses.fields(TaskSpec):
        default = field_default(f)
        shown = "required" if default is dataclasses.MISSING else "none" if default is None else f"`{format_value(default)}`"
        text = field_doc(TaskSpec, f).replace("|", "\\|")  # a bar inside a cell would end it
        rows.append(f"| `{f.name}` | {shown} | {text} |")
    return "\n".join(rows) + "\n"


def template_fields(template: str) -> list[str]:
    return [m[1] for m in FIELD_RE.finditer(template) if m[1] is not None]


def render(template: str, value: Callable[[str], str]) -> str:
    return FIELD_RE.sub(lambda m: m[0][0] if m[1] is None else value(m[1]), template)


# ----------------------------------------------------------------------------------------------------------
# Reading rows, one at a time


def read_csv(path: Path, delimiter: str = ",") -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            yield from reader
        except UnicodeDecodeError as e:  # found a buffer ahead of the reader: no line number would be true
            raise FairError(f"{path}: not UTF-8 text (byte {e.object[e.start:e.end]!r}): save it as UTF-8") from None
        except csv.Error as e:
            raise FairError(f"{path}:{reader.line_num}: not readable as {path.suffix[1:]} ({e})") from None


def read_parquet(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise FairError(f"{path}: reading Parquet needs pyarrow (`pip install pyarrow`)") from None
    try:  # through a buffer: by default pyarrow reads a row group's columns whole, and writers make row groups
        # of up to a million rows (pyarrow's default), so a large corpus would be held entire
        batches = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False).iter_batches(batch_size=256)
    except Exception as e:  # pyarrow's errors for a file that is not Parquet
        raise FairError(f"{path}: not a Parquet file ({e})") from None
    for batch in batches:
        yield from batch.to_pylist()


READERS: dict[str, Callable[[Path], Iterator[dict[str, Any]]]] = {
    ".jsonl": read_jsonl, ".csv": read_csv, ".tsv": lambda path: read_csv(path, "\t"), ".parquet": read_parquet,
}


# ----------------------------------------------------------------------------------------------------------
# A loaded file


@dataclass(frozen=True)
class Declared:
    """A task file, loaded and checked: where its rows are, and how a row becomes an example's fields."""

    path: Path  # the file, absolute: its data files are read from its folder
    shown: Path  # the file as messages name it (as the user gave it, or relative to the working folder)
    spec: TaskSpec

    @property
    def name(self) -> str:
        return self.path.stem

    def rows(self, split: str) -> Iterator[dict[str, Any]]:
        """The split's rows, read lazily; a missing file is reported now, before the first row is asked for."""
        source = self.spec.splits[split]
        if self.spec.hub is not None:
            rows = hub_rows(self.spec.hub, self.spec.hub_config, source, f"{self.shown} reads the hub, but")
        else:
            path = self.path.parent / source
            if not path.is_file():
                raise FairError(f"{self.shown}: splits: {split}: no data file {self.shown.parent / source}")
            rows = READERS[path.suffix.lower()](path)
        return rows if self.spec.id is None else self._unique_ids(rows, split)

    def _unique_ids(self, rows: Iterator[dict[str, Any]], split: str) -> Iterator[dict[str, Any]]:
        """The rows, refused at the first id seen before: a resumed run skips the ids answered, and the records
        are joined by id, so a second row of an id would be dropped without a word (the set costs what the
        resume's set of answered ids costs)."""
        seen: set[str] = set()
        for index, row in enumerate(rows):
            if (value := row.get(self.spec.id)) is not None:
                if (key := str(value)) in seen:
                    raise FairError(f"{self.where(split, index)}: field {self.spec.id!r}: id {key!r} is not unique "
                                    f"(the id of {self.shown})")
                seen.add(key)
            yield row

    def where(self, split: str, index: int) -> str:
        """A row, as messages name it: its data file (or hub split) and its number from 0."""
        source = self.spec.splits[split]
        return f"{self.spec.hub} split {source!r} row {index}" if self.spec.hub else f"{self.shown.parent / source} row {index}"

    def describe(self) -> str:
        """Where the rows are, for `fair tasks`."""
        if self.spec.hub is not None:
            return f"hub {self.spec.hub}" + (f" ({self.spec.hub_config})" if self.spec.hub_config else "")
        shown = self.path.relative_to(REPO_ROOT) if self.path.is_relative_to(REPO_ROOT) else self.path
        return f"{shown}: {', '.join(self.spec.splits.values())}"

    def definition(self) -> dict[str, Any]:
        """The file's keys as they resolve, as plain YAML values (a resumed run compares them)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.spec).items()}

    def example_fields(self, row: dict[str, Any], split: str, index: int) -> dict[str, Any]:
        """An `Example`'s fields from one row; a missing field names the data file, the row and the field."""
        spec = self.spec
        where = self.where(split, index)

        def field(name: str, key: str, empty: bool = False) -> Any:
            value = row.get(name)
            if value is None or (not empty and isinstance(value, str) and not value.strip()):
                # a field absent from the row: a misspelt name or a header's stray space (`question, answer`)
                has = "" if name in row else f"; the row's fields: {', '.join(map(repr, list(row)[:20]))}"
                raise FairError(f"{where}: missing field {name!r} (the {key} of {self.shown}{has})")
            return value

        if "{" in spec.question:
            question = render(spec.question, lambda name: str(field(name, "question", empty=True))).strip()
        else:
            question = str(field(spec.question, "question")).strip()
        if not question:
            raise FairError(f"{where}: the question is empty (the question of {self.shown})")
        options = self._options(row, field, where)
        answer = field(spec.answer, "answer")
        try:
            gold = self._gold(answer, len(options), where)
        except FairError as e:  # a gold its kind cannot take: which task file says that kind
            raise FairError(f"{e} (the answer of {self.shown})") from None
        return dict(id=str(field(spec.id, "id")) if spec.id else f"{split}-{index}", index=index, split=split,
                    question=question, gold=gold, options=options)

    def _options(self, row: dict[str, Any], field: Callable[..., Any], where: str) -> tuple[str, ...]:
        names = self.spec.options
        if names is None:
            return ()
        if isinstance(names, tuple):
            return tuple(str(field(name, "options")).strip() for name in names)
        options = field(names, "options")
        if (not isinstance(options, list | tuple) or not 2 <= len(options) <= len(LETTERS)
                or not all(isinstance(o, str) and o.strip() for o in options)):
            raise FairError(f"{where}: field {names!r} must be a list of 2 to {len(LETTERS)} options, got {options!r}")
        return tuple(o.strip() for o in options)

    def _gold(self, value: Any, options: int, where: str) -> str:
        """The gold answer in the form its kind's grader takes: "145", "yes", "B", or the string itself."""
        kind, name = self.spec.answer_kind, self.spec.answer
        if kind == "number":
            return number_text(value, f"{where}: field {name!r}")
        if kind == "yesno":
            try:
                return normalise_yes_no(value)
            except ValueError as e:
                raise FairError(f"{where}: field {name!r}: {e}") from None
        if kind == "option":
            text = str(value).strip()
            k = int(text) if text.isdigit() else LETTERS.find(text.upper()) if len(text) == 1 else -1
            if not 0 <= k < options:
                raise FairError(f"{where}: field {name!r} must be a letter A-{LETTERS[options - 1]} or an index "
                                f"0-{options - 1}, got {value!r}")
            return LETTERS[k]
        return str(value).strip()

    def prompt(self, example) -> str:
        """The student's prompt: the file's template over {question}, else the question and how to answer."""
        block = question_block(example)
        if self.spec.prompt is None:
            return f"{block}\n\n{answer_instruction(self.spec.answer_kind, len(example.options))}"
        return render(self.spec.prompt, lambda name: block)


def load_declared(path: Path, shown: Path) -> Declared:
    """The task file at `path` (absolute), checked; `shown` is how messages name it."""
    data = read_yaml_mapping(path, "task file", shown)
    return Declared(path, shown, make_config(TaskSpec, data, source=str(shown)))
