"""Small helpers shared by the task files: reading local files and formatting gold answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from fair.errors import FairError
from fair.jsonl import read_jsonl
from fair.tasks import MissingDataFile


def read_split_jsonl(task_dir: Path, split: str) -> list[dict[str, Any]]:
    path = task_dir / f"{split}.jsonl"
    if not path.exists():
        raise MissingDataFile(f"missing data file {path}")
    return list(read_jsonl(path))


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
        raise FairError(f"{where}: gold answer {value!r} is not a number") from None
    return str(int(number)) if number.is_integer() else repr(number)


NUMBER_INSTRUCTION = (
    "Solve the problem step by step. Then write the final answer on its own line as "
    '"The answer is N." where N is a number.'
)


def number_prompt(example) -> str:
    """Our prompt for a math word problem (GSM8K, SVAMP): the question, then how to state the answer."""
    return f"{example.question}\n\n{NUMBER_INSTRUCTION}"


def question_only(example) -> str:
    """The paper's prompt for the math tasks: the bare question."""
    return example.question
