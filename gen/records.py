"""The record of stage 1: one student answer to one task example, graded.

`fair mine` writes every answer to answers.jsonl and the wrong ones (incorrect or unparseable) to
mistakes.jsonl; `fair eval` writes the same records to predictions.jsonl. Later stages read these files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fair.errors import FairError
from fair.eval.tasks import Example, Task
from fair.gen.engine import Engine, Sampling
from fair.jsonl import read_jsonl


@dataclass(frozen=True)
class StudentAnswer:
    id: str
    index: int  # row in the split (the paper's id)
    task: str
    split: str
    question: str
    gold: str
    prediction: str  # the student's whole completion
    extracted: str | None  # the answer the grader found in it; None when none could be found
    correct: bool | None  # None when no answer could be extracted
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str
    solution: str = ""
    context: str = ""
    options: tuple[str, ...] = ()

    @property
    def is_mistake(self) -> bool:
        return self.correct is not True

    def example(self) -> Example:
        return Example(
            id=self.id, index=self.index, split=self.split, question=self.question, gold=self.gold,
            solution=self.solution, context=self.context, options=self.options,
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any], where: str) -> StudentAnswer:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in record and cls.__dataclass_fields__[n].default is dataclasses.MISSING)
        if missing:
            raise FairError(f"{where}: missing field(s) {', '.join(missing)}")
        return cls(**{k: tuple(v) if k == "options" else v for k, v in record.items() if k in names})


def read_answers(path: str | Path) -> list[StudentAnswer]:
    path = Path(path)
    if not path.exists():
        raise FairError(f"missing file {path}")
    return [StudentAnswer.from_json(r, f"{path} record {i}") for i, r in enumerate(read_jsonl(path))]


def answer_examples(
    engine: Engine, task: Task, examples: list[Example], sampling: Sampling, prompt_style: str = "fair"
) -> list[StudentAnswer]:
    """Run the student over examples and grade each completion with the task's grader."""
    build_prompt = task.paper_prompt if prompt_style == "paper" else task.prompt
    generations = engine.generate([build_prompt(e) for e in examples], sampling)
    answers = []
    for example, generation in zip(examples, generations, strict=True):
        grade = task.grade(generation.text, example)
        answers.append(StudentAnswer(
            id=example.id, index=example.index, task=task.name, split=example.split, question=example.question,
            gold=example.gold, prediction=generation.text, extracted=grade.extracted, correct=grade.correct,
            prompt_tokens=generation.prompt_tokens, generated_tokens=generation.generated_tokens,
            finish_reason=generation.finish_reason, solution=example.solution, context=example.context,
            options=example.options,
        ))
    return answers
