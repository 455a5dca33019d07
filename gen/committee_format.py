"""Adapters for the paper's committee files: `*_feedback_round0.json` and `*_rationale_round0.json`.

Schema (shared/data/seed/PROVENANCE.md): each record is a paper mistake record plus, per teacher T,
`T_feedback` (str or null) and `T_rationale` = [text, score by each other teacher in committee order]
(0 = no valid score), and `correct_rationale`, the accepted texts. The paper's teachers are gpt, gemini
and mistral; ours are whatever the committee names, in its order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fair.errors import FairError
from fair.eval.tasks import Example, Task
from fair.eval.tasks._common import read_json_array
from fair.gen.paper_format import example_matcher, export_mistakes, mistake_from_paper
from fair.gen.records import StudentAnswer
from fair.gen.review import accept
from fair.jsonl import JsonArrayWriter, read_jsonl, unique_ids


def teacher_names(record: dict[str, Any]) -> list[str]:
    return [k.removesuffix("_rationale") for k in record if k.endswith("_rationale") and k != "correct_rationale"]


def export_committee(task: Task, records: Iterable[dict[str, Any]]) -> Iterator[tuple[dict, dict]]:
    """Our committee records -> (feedback file record, rationale file record) pairs in the paper's shapes, one
    record at a time: a corpus's committee file need not fit in memory."""
    for record in records:
        mistake = StudentAnswer.from_json(record["mistake"], f"committee record {record['id']}")
        base = export_mistakes(task, [mistake])[0]
        names = list(record["rationales"])
        feedback = base | {f"{n}_feedback": record["feedback"][n]["text"] for n in names}
        rationale = dict(base)
        for author in names:
            entry = record["rationales"][author]
            scores = [entry["reviews"].get(r, {}).get("score") for r in names if r != author]
            rationale[f"{author}_rationale"] = [entry["text"], *(int(round(s)) if s else 0 for s in scores)]
        rationale["correct_rationale"] = [record["rationales"][n]["text"] for n in names if record["rationales"][n]["accepted"]]
        yield feedback, rationale


def write_paper_files(task: Task, committee_path: Path, stem: str) -> tuple[str, str]:
    """The paper's two files beside committee.jsonl, `<stem>_{feedback,rationale}_round0.json`, written as it is
    read: memory stays flat whatever its size."""
    names = (f"{committee_path.parent / stem}_feedback_round0.json", f"{committee_path.parent / stem}_rationale_round0.json")
    with JsonArrayWriter(names[0]) as feedback, JsonArrayWriter(names[1]) as rationale:
        for feedback_record, rationale_record in export_committee(task, unique_ids(read_jsonl(committee_path))):
            feedback.add(feedback_record)
            rationale.add(rationale_record)
    return names


def import_committee(
    task: Task, feedback_path: str | Path, rationale_path: str | Path, examples: list[Example], threshold: float = 3.0
) -> list[dict[str, Any]]:
    """The paper's two files -> our committee records (feedback, rationales with reviews and acceptance)."""
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
        })
    return records
