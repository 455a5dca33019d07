"""Adapters for the paper's student-mistake files (`<student>_<task>_false_round0.json`).

The paper's repo writes a JSON array per task (schema in shared/data/seed/PROVENANCE.md): `id` is the row
in the hub's train split, `gold_answer` is task-specific (a number, "true.\\t<facts>", the GSM8K solution,
or the LogiQA option index), and answers it could not parse are `ABSOLUTE_WRONG_FINAL_ANS`. Our own format
is `StudentAnswer` JSON Lines; these functions convert both ways.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fair.errors import FairError
from fair.records import StudentAnswer
from fair.tasks import OPTION_LETTERS, Example, Task
from fair.tasks._common import read_json_array

NO_ANSWER = "ABSOLUTE_WRONG_FINAL_ANS"
YES_NO_TO_PAPER = {"yes": "true", "no": "false"}


def paper_gold(task: Task, answer: StudentAnswer) -> str:
    if task.name == "strategyqa":
        return f"{YES_NO_TO_PAPER[answer.gold]}.\t{answer.solution}"
    if task.name == "gsm8k":
        return answer.solution
    if task.answer_type == "option":
        return str(OPTION_LETTERS.index(answer.gold))
    return answer.gold


def paper_final_answer(task: Task, extracted: str | None) -> str:
    if extracted is None:
        return NO_ANSWER
    if task.answer_type == "yesno":
        return YES_NO_TO_PAPER[extracted]
    if task.answer_type == "option":
        return str(OPTION_LETTERS.index(extracted))
    return extracted


def export_mistakes(task: Task, mistakes: list[StudentAnswer]) -> list[dict[str, Any]]:
    records = []
    for a in mistakes:
        record: dict[str, Any] = {"id": a.index}
        if task.answer_type == "option":
            record |= {"context": a.context, "question": a.question, "options": list(a.options)}
        else:
            record["question"] = a.question
        record |= {
            "gold_answer": paper_gold(task, a),
            "student_wrong_pred": a.prediction,
            "student_wrong_final_answer": paper_final_answer(task, a.extracted),
        }
        records.append(record)
    return records


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def import_mistakes(task: Task, path: str | Path, examples: list[Example]) -> list[StudentAnswer]:
    """Read a paper mistake file and re-grade each record with our grader against the dataset's example."""
    path = Path(path)
    match = example_matcher(task, examples)
    return [mistake_from_paper(task, record, match, f"{path} record {i}") for i, record in enumerate(read_json_array(path))]


def example_matcher(task: Task, examples: list[Example]):
    """Records are matched to examples by row (`id`), except StrategyQA, whose hub row order differs from the
    current export, so it is matched by question text (see shared/data/seed/PROVENANCE.md)."""
    by_question = {_normalise(e.question): e for e in examples}

    def match(record: dict[str, Any], where: str) -> Example:
        if task.name == "strategyqa":
            example = by_question.get(_normalise(record["question"]))
        else:
            row = record["id"]
            example = examples[row] if isinstance(row, int) and 0 <= row < len(examples) else None
            if example is not None and _normalise(example.question) != _normalise(record["question"]):
                raise FairError(f"{where}: question does not match row {row} of the {task.name} {example.split} split")
        if example is None:
            raise FairError(f"{where}: no example of the {task.name} split matches id {record['id']!r}")
        return example

    return match


def mistake_from_paper(task: Task, record: dict[str, Any], match, where: str) -> StudentAnswer:
    for key in ("id", "question", "student_wrong_pred"):
        if key not in record:
            raise FairError(f"{where}: missing field {key!r}")
    example = match(record, where)
    grade = task.grade(record["student_wrong_pred"], example)
    return StudentAnswer(
        id=example.id, index=example.index, task=task.name, split=example.split, question=example.question,
        gold=example.gold, prediction=record["student_wrong_pred"], extracted=grade.extracted,
        correct=grade.correct, prompt_tokens=0, generated_tokens=0, finish_reason="imported",
        solution=example.solution, context=example.context, options=example.options,
    )
