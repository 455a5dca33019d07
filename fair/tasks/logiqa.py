"""LogiQA v1 (Liu et al. 2020): four-option logical reading comprehension.

Locally only `validation` (Eval.txt) and `test` (Test.txt) exist; `train` comes from the hub.
"""

import re
from pathlib import Path

from fair.errors import FairError
from fair.tasks import OPTION_LETTERS, Example, MissingDataFile, Task, require_field
from fair.tasks._common import answer_instruction, question_block

LOCAL_FILES = {"train": "Train.txt", "validation": "Eval.txt", "test": "Test.txt"}


def read_local(task_dir: Path, split: str) -> list[dict]:
    """Parse the release's 8-line blocks: blank, answer letter, context, query, four options."""
    path = task_dir / LOCAL_FILES[split]
    if not path.exists():
        raise MissingDataFile(f"missing data file {path}")
    lines = path.read_text(encoding="utf-8").split("\n")
    if len(lines) % 8 != 0:
        raise FairError(f"{path}: expected 8 lines per example, got {len(lines)} lines")
    rows = []
    for start in range(0, len(lines), 8):
        letter, context, query, *options = (line.strip() for line in lines[start + 1 : start + 8])
        if letter not in ("a", "b", "c", "d"):
            raise FairError(f"{path}:{start + 2}: expected an answer letter a-d, got {letter!r}")
        rows.append({
            "context": context,
            "query": query,
            "options": [strip_option_prefix(option, k) for k, option in enumerate(options)],
            "correct_option": "abcd".index(letter),
        })
    return rows


def strip_option_prefix(option: str, k: int) -> str:
    return re.sub(rf"^{OPTION_LETTERS[k]}\s*[.?．]\s*", "", option)


def to_example(row: dict, split: str, index: int) -> Example:
    where = f"logiqa {split} row {index}"
    options = require_field(row, "options", where)
    correct = row.get("correct_option")
    if len(options) != 4 or correct not in (0, 1, 2, 3):
        raise FairError(f"{where}: expected 4 options and correct_option in 0-3")
    return Example(
        id=f"{split}-{index}",
        index=index,
        split=split,
        question=require_field(row, "query", where).strip(),
        gold=OPTION_LETTERS[correct],
        context=require_field(row, "context", where).strip(),
        options=tuple(o.strip() for o in options),
    )


# The paper's prompt, verbatim with its trailing space (all_prompts.py), which prints the options as a Python list.
PAPER_PROMPT = (
    "\nGiven the context: {}\nQuery: {}\nThere are four options in the list: {}. \n"
    "Give me your answer and rationale immediately. Let's think step by step.\n"
)

TASK = Task(
    name="logiqa",
    hub_id="lucasmccabe/logiqa",
    answer_type="option",
    splits=("train", "validation", "test"),
    read_local=read_local,
    to_example=to_example,
    prompt=lambda ex: f"{question_block(ex)}\n\n{answer_instruction('option')}",
    paper_prompt=lambda ex: PAPER_PROMPT.format(ex.context, ex.question, list(ex.options)),
    aliases=("logiQA",),
    paper_instruction="Answer the following question based on the given context, query and options.",
    paper_shows_prompt=True,  # a question without its context and options could not be answered
)
