"""The record of stage 1: one student answer to one task example, graded.

`fair mine` writes every answer to answers.jsonl and the wrong ones (incorrect or unparseable) to
mistakes.jsonl; `fair eval` writes the same records to predictions.jsonl. Later stages read these files.

Also how the stages after the committee read its replies in committee.jsonl (gen/committee/run.py writes
them): `committee_replies` walks a record's feedback, rationales and reviews, and `usable_text` says which
reply text may be reviewed, scored or trained on.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fair.engines.base import Engine, Sampling
from fair.errors import FairError
from fair.jsonl import read_jsonl
from fair.models import resolve_model
from fair.tasks import OPTION_LETTERS, Example, Task
from fair.tasks._common import question_block as example_question_block

Messages = tuple[tuple[str, str], ...]  # (role, text) pairs: what a teacher is asked


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

    @classmethod
    def graded(cls, task: Task, example: Example, prediction: str, *, finish_reason: str, prompt_tokens: int = 0,
               generated_tokens: int = 0) -> StudentAnswer:
        """The one way an answer is made from an example: graded here by the task's grader."""
        grade = task.grade(prediction, example)
        return cls(
            id=example.id, index=example.index, task=task.name, split=example.split, question=example.question,
            gold=example.gold, prediction=prediction, extracted=grade.extracted, correct=grade.correct,
            prompt_tokens=prompt_tokens, generated_tokens=generated_tokens, finish_reason=finish_reason,
            solution=example.solution, context=example.context, options=example.options,
        )

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


# Settings that change what a student answers: resumed work must match the finished part on all of them.
ANSWER_DEFINING = ("model", "split", "max_new_tokens", "temperature", "top_p", "seed", "chat", "prompt_style",
                   "dtype")


def finished_answers(*paths: Path) -> dict[str, StudentAnswer]:
    """Every answered id in these logs (later files win): how `fair eval` resumes."""
    return {a.id: a for a in answered(*paths)}


def answered(*paths: Path) -> Iterator[StudentAnswer]:
    """Each answered id in these logs once, streamed for logs too large to hold (`fair mine` resumes by it): the
    later files are read first and win; within a file, an id's first record (none is written twice)."""
    seen: set[str] = set()
    for path in reversed(paths):
        if path.exists():
            for i, record in enumerate(read_jsonl(path)):
                if record.get("id") not in seen:
                    answer = StudentAnswer.from_json(record, f"{path} record {i}")
                    seen.add(answer.id)
                    yield answer


def model_fingerprint(model: str) -> str:
    """Names, sizes and times of a local model's weight files (a retrained model in the same folder differs)."""
    path = Path(resolve_model(model))
    if not path.is_dir():
        return model
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)


def check_resumable(config: Any, saved_path: Path, task: Task, extra: tuple[str, ...] = ()) -> None:
    """Refuse to add answers made with other settings (or another build of the model, or the task's file edited)
    to an output folder."""
    fingerprint_path = saved_path.with_name("model_fingerprint")
    fingerprint = model_fingerprint(config.model)
    definition_path, definition = saved_path.with_name("task_definition.yaml"), task.definition()
    if saved_path.exists():
        saved = yaml.safe_load(saved_path.read_text()) or {}
        changed = [k for k in (*extra, *ANSWER_DEFINING) if k in saved and saved[k] != getattr(config, k)]
        if fingerprint_path.exists() and fingerprint_path.read_text() != fingerprint:
            changed.append("model weights")
        if definition_path.exists():  # a folder older than this file holds none: nothing to compare
            was = yaml.safe_load(definition_path.read_text()) or {}
            changed += [f"task {k}" for k in {**was, **definition} if was.get(k) != definition.get(k)]
        if changed:
            raise FairError(f"{saved_path.parent} holds answers made with other settings ({', '.join(changed)} "
                            "changed); use another --out, or delete that folder")
    fingerprint_path.parent.mkdir(parents=True, exist_ok=True)
    fingerprint_path.write_text(fingerprint)
    definition_path.write_text(yaml.safe_dump(definition, sort_keys=False))


def answer_examples(
    engine: Engine, task: Task, examples: list[Example], sampling: Sampling, prompt_style: str = "fair"
) -> list[StudentAnswer]:
    """Run the student over examples and grade each completion with the task's grader."""
    build_prompt = task.paper_prompt if prompt_style == "paper" else task.prompt
    generations = engine.generate([build_prompt(e) for e in examples], sampling)
    return [
        StudentAnswer.graded(task, example, g.text, finish_reason=g.finish_reason, prompt_tokens=g.prompt_tokens,
                             generated_tokens=g.generated_tokens)
        for example, g in zip(examples, generations, strict=True)
    ]


def gold_hint(task: Task, answer: StudentAnswer) -> str:
    """The correct final answer as a hint to a teacher or the student: LogiQA's letter with its option."""
    if task.answer_type == "option":
        k = OPTION_LETTERS.index(answer.gold)
        return f"{answer.gold}. {answer.options[k]}"
    return answer.gold


def question_block(task: Task, answer: StudentAnswer) -> str:
    """The question as the student saw it, options included, without answer-format instructions."""
    return example_question_block(answer)


def fence(text: str) -> str:
    """The text between a line of '<'s and a line of '>'s, three each unless the text holds a run as long (a
    Python session's ">>>", or a rationale that ends our fence and writes its own hint): then one more than its
    longest run, as Markdown lengthens a code fence. The text cannot close its fence and pass for our prompt.
    The committee's prompts (gen/committee/prompts.py) and the student's training prompts (train/data.py) fence
    a student's answer and a rationale with it."""
    n = max([3] + [len(run) + 1 for run in re.findall(r">{3,}", text)])
    return f"{'<' * n}\n{text.strip()}\n{'>' * n}"


# ----------------------------------------------------------------------------------------------------------
# The committee's replies (committee.jsonl)


SAMPLE_MARK = "#"  # a teacher's k-th rationale (k >= 2) is keyed "<teacher>#<k>" (`fair committee --samples`)


def sample_key(teacher: str, k: int) -> str:
    """The `rationales` key of a teacher's k-th sample (k from 1: the first keeps the teacher's name)."""
    return teacher if k == 1 else f"{teacher}{SAMPLE_MARK}{k}"


def teacher_of(key: str) -> str:
    """The teacher who wrote the rationale under this key."""
    return key.split(SAMPLE_MARK, 1)[0]


def sample_of(key: str) -> int:
    return int(key.split(SAMPLE_MARK, 1)[1]) if SAMPLE_MARK in key else 1


def committee_replies(record: dict) -> Iterator[tuple[str, str, dict]]:
    """Each teacher reply in a committee.jsonl record as (teacher, kind, entry), kind feedback, rationale or
    review; a review's teacher is its reviewer, a rationale's its author (whichever sample it is)."""
    for name, entry in record["feedback"].items():
        yield name, "feedback", entry
    for name, rationale in record["rationales"].items():
        yield teacher_of(name), "rationale", rationale
        for reviewer, review in rationale.get("reviews", {}).items():
            yield reviewer, "review", review


def check_committee_record(record: dict, where: str, task: Task | None) -> StudentAnswer:
    """A committee.jsonl record's mistake, once its fields are checked as every reader needs them (the ids,
    the teachers' entries, the mistake's fields and, given a task, its task); a FairError naming `where`."""
    for key in ("id", "mistake", "feedback", "rationales"):
        if not isinstance(record.get(key), str if key == "id" else dict):
            raise FairError(f"{where}: missing or malformed field {key!r}")
    for key in ("feedback", "rationales"):
        for name, entry in record[key].items():
            if not isinstance(entry, dict) or "text" not in entry:
                raise FairError(f"{where}: {key}.{name} must be an object with a 'text' field")
    mistake = StudentAnswer.from_json(record["mistake"], f"{where} field 'mistake'")
    if task is not None and mistake.task != task.name:
        raise FairError(f"{where}: a {mistake.task!r} mistake, but task {task.name!r}")
    return mistake


def usable_text(entry: dict | None, field: str = "text") -> str | None:
    """The stripped text of a reply that may be reviewed, scored or trained on; None when the request failed,
    the provider refused it (text None, `refused` its reason), it was cut off at max_tokens (`truncated`: a
    rationale without its final answer, an explanation that stops mid-sentence), or it is blank. Records
    written before `truncated` and `refused` existed read as neither."""
    entry = entry or {}
    text = entry.get(field)
    if entry.get("truncated") or entry.get("refused") is not None or not isinstance(text, str):
        return None
    return text.strip() or None
