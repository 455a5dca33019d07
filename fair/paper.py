"""Everything we know about the paper's code and files, in one place (arXiv 2410.03663, its repository).

- Its files. Student mistakes (`<student>_<task>_false_round0.json`) and the committee's feedback and
  rationales (`*_feedback_round0.json`, `*_rationale_round0.json`); schemas in shared/data/seed/PROVENANCE.md.
  A mistake record's `id` is the row in the hub's train split; `gold_answer` is task-specific (a number,
  "true.\\t<facts>", the GSM8K solution, or the LogiQA option index); answers it could not parse are
  `ABSOLUTE_WRONG_FINAL_ANS`. A rationale record holds, per teacher T, `T_feedback` (str or null) and
  `T_rationale` = [text, score by each other teacher in committee order] (0 = no valid score), and
  `correct_rationale`, the accepted texts. The paper's teachers are gpt, gemini and mistral; ours are
  whatever the committee names, in its order. The functions below convert both ways. Ours add one field where a
  run chose its rationales by another filter than the paper's review (fair/recipes.py): `filter`, which the
  paper's code never reads and which brings the recipe back on import.
- Its prompts, verbatim from its all_prompts.py: the committee's feedback and review requests, and the
  "### Instruction / ### Input / ### Response" training templates. Where a task differs (its gold, the hint in
  a training prompt, the question shown, the training instruction, matching a file's records by question), its
  own file says so in the `paper_*` fields of its `Task` (fair/tasks/__init__.py); nothing here names a task.
- Its acceptance rule: a rationale is kept when the mean of its valid peer scores is above the threshold (3).

The per-task student prompts (`Task.paper_prompt`) stay in the task files beside our own prompts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fair.errors import FairError
from fair.jsonl import JsonArrayWriter, read_jsonl, unique_ids
from fair.recipes import PAPER_FILTER, Filter, check_filter, recorded_filter
from fair.records import Messages, StudentAnswer
from fair.tasks import OPTION_LETTERS, PAPER_YES_NO, Example, Task
from fair.tasks._common import read_json_array

# ----------------------------------------------------------------------------------------------------------
# Its gold answers

NO_ANSWER = "ABSOLUTE_WRONG_FINAL_ANS"


def paper_gold(task: Task, answer: StudentAnswer) -> str:
    if task.paper_gold is not None:
        return task.paper_gold(answer.example())
    if task.answer_type == "option":
        return str(OPTION_LETTERS.index(answer.gold))
    return answer.gold


def paper_final_answer(task: Task, extracted: str | None) -> str:
    if extracted is None:
        return NO_ANSWER
    if task.answer_type == "yesno":
        return PAPER_YES_NO[extracted]
    if task.answer_type == "option":
        return str(OPTION_LETTERS.index(extracted))
    return extracted


def gold_from_paper(task: Task, gold: Any, where: str) -> str:
    """A `gold_answer` field in the form our graders take (the inverse of `paper_gold`)."""
    gold = str(gold)
    if task.answer_type == "yesno":
        return gold.split(".\t", 1)[0]  # "false.\t<facts>"
    if task.answer_type == "option":
        if gold.strip() not in ("0", "1", "2", "3"):
            raise FairError(f"{where}: field 'gold_answer' must be an option index 0-3, got {gold!r}")
        return OPTION_LETTERS[int(gold)]
    return gold.rsplit("####", 1)[-1]  # GSM8K keeps the whole solution; the answer follows "####"


# ----------------------------------------------------------------------------------------------------------
# Its prompts

COMMITTEE_FEEDBACK = """
Imagine you are a teacher, I will give you one student's incorrect answer to a question. You should point out the mistakes in the student's answer.
Question: {}
Student's Answer: {}
Hint: The correct answer should be {}.
"""
COMMITTEE_REVIEW = """
Imagine you are a reviewer, I will give you one submission about the rationale for a question. You should simulate the peer-review process by evaluating the rationale based on its correctness and soundness. Let's think step by step, but your final answer should only be one number, ranging from 1-5 (the higher the score is, the more possible you think the rationale is correct). The score should be wrapped by square brackets, such as: [5].
Question: {}
Rationale: {}
Hint: The correct answer should be {}.
"""
# Its training templates. The feedback input is the teacher's feedback prompt without the first sentence, and
# ends in a newline, hence the blank line before "### Response:".
TRAINING_TEMPLATE = "\n### Instruction:\n{}\n### Input:\n{}\n### Response:\n"
TRAINING_FEEDBACK_INSTRUCTION = ("Imagine you are a teacher, I will give you one student's incorrect answer to a "
                                 "question. You should point out the mistakes in the student's answer.")
TRAINING_FEEDBACK_INPUT = "Question: {}\nStudent's Answer: {}\nHint: The correct answer should be {}.\n"


def shown_question(task: Task, answer: StudentAnswer) -> str:
    """The question inside a feedback, review or training prompt: the student's paper prompt where the task
    says so (LogiQA's context and options), else the bare question."""
    return task.paper_prompt(answer.example()) if task.paper_shows_prompt else answer.question


def feedback_messages(task: Task, answer: StudentAnswer) -> Messages:
    return (("user", COMMITTEE_FEEDBACK.format(shown_question(task, answer), answer.prediction,
                                               paper_gold(task, answer))),)


def rationale_messages(task: Task, answer: StudentAnswer) -> Messages:
    """The teacher gets the student's own paper prompt (StrategyQA's and LogiQA's carry answer instructions; the
    maths tasks' is the bare question)."""
    return (("user", task.paper_prompt(answer.example())),)


def review_messages(task: Task, answer: StudentAnswer, rationale: str) -> Messages:
    return (("user", COMMITTEE_REVIEW.format(shown_question(task, answer), rationale, paper_gold(task, answer))),)


def training_hint(task: Task, mistake: StudentAnswer) -> str:
    """The gold as its data.py shows it: the task's `paper_hint` (StrategyQA 'true.', GSM8K the number after
    ####), else its paper gold (LogiQA the option index 0-3, not the letter); kept for parity."""
    if task.paper_hint is not None:
        return task.paper_hint(mistake.example())
    return paper_gold(task, mistake).strip()


def training_prompts(task: Task, mistake: StudentAnswer) -> tuple[str, str]:
    """(feedback prompt, rationale prompt) of one mistake in its training templates, no chat template."""
    question = shown_question(task, mistake)
    feedback_input = TRAINING_FEEDBACK_INPUT.format(question, mistake.prediction, training_hint(task, mistake))
    return (TRAINING_TEMPLATE.format(TRAINING_FEEDBACK_INSTRUCTION, feedback_input).strip(),
            TRAINING_TEMPLATE.format(task.paper_instruction, question).strip())


def accept(scores: list[float | None], threshold: float) -> tuple[float | None, bool]:
    """Mean of the valid scores and whether it is above the threshold (the paper: > 3)."""
    valid = [s for s in scores if s is not None]
    if not valid:
        return None, False
    mean = sum(valid) / len(valid)
    return mean, mean > threshold


# ----------------------------------------------------------------------------------------------------------
# Its files


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
    """Records are matched to examples by row (`id`), or by question text where the task says its rows moved
    (`paper_match_by_question`: StrategyQA's hub row order differs from the export, shared/data/seed/PROVENANCE.md)."""
    by_question = {_normalise(e.question): e for e in examples}

    def match(record: dict[str, Any], where: str) -> Example:
        if task.paper_match_by_question:
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
    return StudentAnswer.graded(task, example, record["student_wrong_pred"], finish_reason="imported")


def teacher_names(record: dict[str, Any]) -> list[str]:
    return [k.removesuffix("_rationale") for k in record if k.endswith("_rationale") and k != "correct_rationale"]


def export_committee(task: Task, records: Iterable[dict[str, Any]]) -> Iterator[tuple[dict, dict]]:
    """Our committee records -> (feedback file record, rationale file record) pairs in the paper's shapes, one
    record at a time: a corpus's committee file need not fit in memory. A reply cut off at max_tokens goes out
    as null, as a failed one does: the paper's files cannot mark it, and nothing may train on it. The paper's shape
    holds one rationale per teacher: a teacher's first sample fills `<teacher>_rationale` (scores of 0 where the
    run's filter sent no review), and `correct_rationale` lists every accepted one, later samples included (the
    texts the paper's training draws from), accepted under the run's filter (fair/recipes.py), which a run of
    another filter than the paper's names in `filter`."""
    def whole(entry: dict[str, Any]) -> str | None:
        return None if entry.get("truncated") else entry["text"]

    for record in records:
        mistake = StudentAnswer.from_json(record["mistake"], f"committee record {record['id']}")
        base = export_mistakes(task, [mistake])[0]
        names = list(record["feedback"])  # the teachers, in committee order
        feedback = base | {f"{n}_feedback": whole(record["feedback"][n]) for n in names}
        rationale = dict(base)
        for author in names:
            entry = record["rationales"][author]
            scores = [entry["reviews"].get(r, {}).get("score") for r in names if r != author]
            rationale[f"{author}_rationale"] = [whole(entry), *(int(round(s)) if s else 0 for s in scores)]
        rationale["correct_rationale"] = [r["text"] for r in record["rationales"].values() if r["accepted"]]
        if recorded_filter(record) != PAPER_FILTER:
            rationale["filter"] = record["filter"]
        yield feedback, rationale


def paper_file_name(stem: str, kind: str, round: int = 0) -> str:
    """The paper's name for one of its files: `<stem>_<kind>_round<r>.json`, kind false (the student's mistakes),
    feedback or rationale, `<stem>` its `<student>_<task>`; round r holds what the student of round r got
    wrong (`fair loop` runs rounds 0, 1, ...)."""
    return f"{stem}_{kind}_round{round}.json"


def write_paper_files(task: Task, committee_path: Path, stem: str, round: int = 0) -> tuple[str, str]:
    """The paper's two files beside committee.jsonl, `<stem>_{feedback,rationale}_round<r>.json`, written as it is
    read: memory stays flat whatever its size."""
    names = (str(committee_path.parent / paper_file_name(stem, "feedback", round)),
             str(committee_path.parent / paper_file_name(stem, "rationale", round)))
    with JsonArrayWriter(names[0]) as feedback, JsonArrayWriter(names[1]) as rationale:
        for feedback_record, rationale_record in export_committee(task, unique_ids(read_jsonl(committee_path))):
            feedback.add(feedback_record)
            rationale.add(rationale_record)
    return names


def import_committee(
    task: Task, feedback_path: str | Path, rationale_path: str | Path, examples: list[Example], threshold: float = 3.0
) -> list[dict[str, Any]]:
    """The paper's two files -> our committee records (feedback, rationales with reviews and acceptance), under
    the filter a record names (ours, exported from a run of another filter) or else the paper's."""
    feedback = {r["id"]: r for r in read_json_array(Path(feedback_path))}
    match = example_matcher(task, examples)
    records = []
    for i, row in enumerate(read_json_array(Path(rationale_path))):
        where = f"{rationale_path} record {i}"
        names = teacher_names(row)
        if not names or "correct_rationale" not in row:
            raise FairError(f"{where}: expected <teacher>_rationale fields and correct_rationale")
        mistake = mistake_from_paper(task, row, match, where)
        feedback_row = feedback.get(row["id"], {})
        rationales = {}
        for author in names:
            value = row[f"{author}_rationale"]
            if not isinstance(value, list) or len(value) != len(names):
                raise FairError(f"{where}: {author}_rationale must be [text, {len(names) - 1} scores]")
            text, *scores = value
            reviewers = [n for n in names if n != author]
            valid = [float(s) if isinstance(s, int | float) and 1 <= s <= 5 else None for s in scores]
            mean, _ = accept(valid, threshold)
            rationales[author] = {
                "text": text, "error": None if text is not None else "missing in the paper's file",
                "reviews": {r: {"score": s, "reply": None, "error": None} for r, s in zip(reviewers, valid, strict=True)},
                "mean_score": mean, "accepted": text in row["correct_rationale"],
            }
        records.append({
            "id": mistake.id, "mistake": mistake.to_json(),
            "feedback": {n: {"text": feedback_row.get(f"{n}_feedback"), "error": None} for n in names},
            "rationales": rationales, "usage": {}, "prompts": "paper-imported", "threshold": threshold,
            "filter": file_filter(row, where),
        })
    return records


def file_filter(row: dict[str, Any], where: str) -> Filter:
    try:
        return check_filter(row.get("filter", PAPER_FILTER))
    except FairError as error:
        raise FairError(f"{where}: field filter: {error}") from None
