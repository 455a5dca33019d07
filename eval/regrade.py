"""`fair grade --task T FILE [--json]`: re-grade a predictions file with our graders.

Two formats are read, told apart by their content:
  - ours: JSON Lines (or a JSON array), gzipped or not, of records with `id`, `prediction`, `gold` and for an
    option task (LogiQA, a declared one) `options`, 2 to 4 of them; a record without `gold` or `options` takes
    them from the task's example with its id (the experiment's docs/results/<unit>.predictions.jsonl.gz);
  - the paper's mistake files: a JSON array of records with `id`, `gold_answer`, `student_wrong_pred`
    (SVAMP "145"; GSM8K a solution ending in "#### N"; StrategyQA "false.\\t<facts>"; LogiQA an option
    index "0"-"3" with the record's `options`).

Reproduce the numbers in docs/grader_report.md with
    python -m eval.regrade --task svamp ../shared/data/seed/Llama-2-7b-chat-hf_svamp_false_round0.json
and an experiment unit's accuracy with
    python -m eval.regrade --task svamp docs/results/own-gold.predictions.jsonl.gz
"""

from __future__ import annotations

import gzip
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fair.config import Validated, build_config, config_parser
from fair.errors import FairError, main_guard
from fair.grading import LETTERS, normalise_yes_no
from fair.jsonl import read_jsonl
from fair.paper import gold_from_paper
from fair.tasks import Example, Task, get_task

PAPER_TEXT = "student_wrong_pred"


@dataclass
class GradeConfig(Validated):
    task: str  # the benchmark whose grader judges the file (`fair tasks` lists them)
    file: str  # our JSON Lines (id, gold, prediction) or a paper mistake file
    json: bool = False  # print {"id", "correct", "extracted"} per record; the summary goes to stderr
    data_dir: str | None = None  # benchmark data, for LogiQA records whose options are looked up by id

    def validate(self) -> None:
        get_task(self.task)


def read_records(path: Path) -> list[dict[str, Any]]:
    """A JSON array or JSON Lines, whichever the file holds."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise FairError(f"{path}: no such file") from None
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise FairError(f"{path}: cannot read ({e.strerror or e})") from None
    if not data.lstrip().startswith(b"["):
        return list(read_jsonl(path))
    try:
        records = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise FairError(f"{path}: not valid JSON ({e})") from None
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise FairError(f"{path}: record {i}: expected a JSON object, got {type(record).__name__}")
    return records


def _field(record: dict[str, Any], key: str, where: str) -> Any:
    if record.get(key) is None:
        raise FairError(f"{where}: missing field {key!r}")
    return record[key]


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = _field(record, key, where)
    if not isinstance(value, str):
        raise FairError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value  # may be empty: an empty reply is a real (unparseable) prediction


class _Examples:
    """The task's examples by id, a split at a time as needed: the gold and options of records that do not carry
    them. An id "<split>-<row>" (LogiQA's) is looked up in its split only, any other (SVAMP's "chal-12") in each."""

    def __init__(self, task: Task, data_dir: str | None):
        self.task, self.data_dir, self.splits = task, data_dir, {}

    def get(self, record_id: Any, field: str, where: str) -> Example:
        named = str(record_id).rpartition("-")[0]
        for split in [named] if named in self.task.splits else self.task.splits:
            if (example := self.split(split, field, where).get(str(record_id))) is not None:
                return example
        raise FairError(f"{where}: missing field {field!r} (and no {self.task.name} example has id {record_id!r})")

    def split(self, split: str, field: str, where: str) -> dict[str, Example]:
        if split not in self.splits:
            try:
                self.splits[split] = {e.id: e for e in self.task.load(split, self.data_dir)}
            except FairError as e:
                raise FairError(f"{where}: missing field {field!r}, and loading them failed: {e}") from None
        return self.splits[split]


def grade_file(task_name: str, path: str | Path, data_dir: str | None = None) -> list[dict[str, Any]]:
    """One {"id", "gold", "extracted", "correct"} per record; correct is None when nothing was extracted."""
    task, path = get_task(task_name), Path(path)
    records = read_records(path)
    paper = bool(records) and PAPER_TEXT in records[0]
    text_key, gold_key = (PAPER_TEXT, "gold_answer") if paper else ("prediction", "gold")
    lookup = _Examples(task, data_dir)
    results = []
    for i, record in enumerate(records):
        where = f"{path}: record {i}"
        record_id = _field(record, "id", where)
        text = _text(record, text_key, where)
        if paper or record.get(gold_key) is not None:
            gold = _field(record, gold_key, where)
        else:  # the experiment's predictions files: the example with its id has it
            gold = lookup.get(record_id, "gold", where).gold
        if isinstance(gold, bool):  # our StrategyQA gold may be a JSON boolean
            gold = "yes" if gold else "no"
        gold = gold_from_paper(task, gold, where) if paper else str(gold)
        options: tuple[str, ...] = ()
        if task.answer_type == "option":
            raw = record.get("options")
            options = tuple(raw) if isinstance(raw, list) else lookup.get(record_id, "options", where).options
            if not 2 <= len(options) <= len(LETTERS) or not all(isinstance(o, str) for o in options):
                raise FairError(f"{where}: field 'options' must be a list of 2 to {len(LETTERS)} strings")
        try:
            example = Example(id=str(record_id), index=i, split="", question="", gold=gold, options=options)
            grade = task.grade(text, example)
            if task.answer_type == "yesno":
                gold = normalise_yes_no(gold)
        except ValueError as e:  # the grader's message says what is wrong with the gold answer
            raise FairError(f"{where}: field {gold_key!r}: {e}") from None
        results.append(dict(id=record_id, gold=gold, extracted=grade.extracted, correct=grade.correct))
    return results


def summary(results: list[dict[str, Any]]) -> str:
    n = len(results)
    counts = {
        "correct": sum(r["correct"] is True for r in results),
        "wrong": sum(r["correct"] is False for r in results),
        "unparseable": sum(r["correct"] is None for r in results),
    }
    lines = [f"records      {n:6d}"]
    for name, count in counts.items():
        share = f"{100 * count / n:5.1f}%" if n else "    -"
        lines.append(f"{name:<12} {count:6d}  {share}")
    return "\n".join(lines)


def run(config: GradeConfig) -> int:
    results = grade_file(config.task, config.file, config.data_dir)
    if config.json:  # stdout carries only the records, so that it can be piped; the summary goes to stderr
        for r in results:
            print(orjson.dumps({"id": r["id"], "correct": r["correct"], "extracted": r["extracted"]}).decode())
        print(summary(results), file=sys.stderr)
    else:
        print(f"{config.file} ({config.task})\n{summary(results)}")
    return 0


if __name__ == "__main__":
    parser = config_parser(GradeConfig, "fair grade", __doc__, positional=("file",))
    sys.exit(main_guard("fair grade", lambda: run(build_config(GradeConfig, parser.parse_args()))))
