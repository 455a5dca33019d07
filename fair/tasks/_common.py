"""What the task files and the declared tasks share: reading local files and hub splits, gold answers, and the
student's prompt (the question block, then how to state the answer so that its kind's grader reads it).

This module imports nothing from fair/tasks/__init__.py, which imports it: the registry, the built-in task files
and fair/tasks/_declared.py all build on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from fair.errors import FairError
from fair.grading import LETTERS
from fair.jsonl import read_jsonl


class MissingDataFile(FairError):
    """A split's file is absent from a local data folder (e.g. LogiQA's Train.txt, which is not shipped)."""


def read_split_jsonl(task_dir: Path, split: str) -> Iterator[dict[str, Any]]:
    """<task dir>/<split>.jsonl, one record at a time; a missing file is reported now, not at the first read."""
    path = task_dir / f"{split}.jsonl"
    if not path.exists():
        raise MissingDataFile(f"missing data file {path}")
    return read_jsonl(path)


def hub_rows(hub_id: str, config: str | None, split: str, missing: str) -> Iterator[dict[str, Any]]:
    """A hub dataset's split, fetched once by `datasets` and then read a row at a time from its memory-mapped
    Arrow cache. `missing` opens the message when `datasets` is not installed (what else was looked for)."""
    try:
        import datasets
    except ImportError:
        raise FairError(f"{missing} the `datasets` package is not installed to fetch {hub_id}: "
                        "`pip install datasets`") from None
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # network, auth and schema errors all end here; say which dataset failed
        raise FairError(f"could not load {hub_id} split {split!r} from the hub: {e}") from None
    return map(dict, ds)


def read_json_array(path: Path) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise FairError(f"missing data file {path}") from None
    except orjson.JSONDecodeError as e:
        raise FairError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise FairError(f"{path}: expected a JSON array of records")
    return data


def number_text(value: Any, where: str) -> str:
    """145.0 -> "145", "1,000" -> "1000", 2.5 -> "2.5": the canonical form of a numeric gold answer."""
    try:
        number = float(str(value).replace(",", "").strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number):  # "nan", "inf" and "1e999" parse, but no reply's number can ever equal them
        raise FairError(f"{where}: gold answer {value!r} is not a number")
    return str(int(number)) if number.is_integer() else repr(number)


# ----------------------------------------------------------------------------------------------------------
# The student's prompt

NUMBER_INSTRUCTION = (
    "Solve the problem step by step. Then write the final answer on its own line as "
    '"The answer is N." where N is a number.'
)
THINK = "Think step by step. Then write the final answer on its own line as "


def answer_instruction(kind: str, options: int = 4) -> str:
    """How to state the answer so that the grader of `kind` (fair/grading.py) reads it."""
    if kind == "number":
        return NUMBER_INSTRUCTION
    if kind == "yesno":
        return THINK + '"The answer is yes." or "The answer is no."'
    if kind == "option":
        letters = list(LETTERS[:options])
        return THINK + f'"The answer is X." where X is {", ".join(letters[:-1])} or {letters[-1]}.'
    return THINK + '"The answer is X."'


def question_block(example) -> str:
    """The question as the student sees it, options lettered, without answer-format instructions: every task's
    prompt opens with it, and the committee's and the training prompts show it (fair/records.py)."""
    if not example.options:
        return example.question
    options = "\n".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(example.options))
    return "\n\n".join(filter(None, (example.context, f"Question: {example.question}\n{options}")))


def number_prompt(example) -> str:
    """Our prompt for a math word problem (GSM8K, SVAMP): the question, then how to state the answer."""
    return f"{example.question}\n\n{NUMBER_INSTRUCTION}"


def question_only(example) -> str:
    """The paper's prompt for the math tasks: the bare question."""
    return example.question
