"""Which texts of each mistake train: --teacher (mixed, all, a name) and --filter (review, gold, gold+review, none),
on the paper's SVAMP committee files (the `paper_records` fixture, tests/conftest.py)."""

from __future__ import annotations

import copy
import json
import random

import pytest

from fair.errors import FairError
from fair.records import StudentAnswer, usable_text
from fair.tasks import get_task
from train.data import build_examples

SVAMP = get_task("svamp")


@pytest.fixture(scope="module")
def records(paper_records):
    return paper_records


def kinds_of(examples, kind):
    return [e for e in examples if e.kind == kind]


def test_mixed_keeps_the_papers_365_and_counts_the_22_skipped(records):
    examples, report = build_examples(records, SVAMP, "mixed", seed=731, prompt_format="paper")
    assert len(records) == report.mistakes == 387
    assert report.rationale_examples == report.feedback_examples == 365
    assert report.skipped == {"no accepted rationale": 22}
    accepted = {(r["id"], t["text"].strip()) for r in records for t in r["rationales"].values() if t["accepted"]}
    assert all((e.mistake_id, e.completion) in accepted for e in kinds_of(examples, "rationale"))
    assert "22" in report.summary() and "no accepted rationale" in report.summary()


def test_mixed_draws_the_same_texts_as_the_papers_code(records, paper_seed_files):
    """The paper's data.py loop, replayed with its seed: random.choice of a feedback key, then of a correct one."""
    feedback_file, rationale_file = (json.loads(p.read_text()) for p in paper_seed_files)
    rng, expected = random.Random(731), []
    for feedback, rationale in zip(feedback_file, rationale_file, strict=True):
        chosen = feedback[rng.choice(["gpt_feedback", "gemini_feedback", "mistral_feedback"])]
        if rationale["correct_rationale"]:
            expected.append((chosen.strip(), rng.choice(rationale["correct_rationale"]).strip()))
    examples, _ = build_examples(records, SVAMP, "mixed", seed=731, prompt_format="paper")
    ours = [e.completion for e in examples]
    assert list(zip(ours[0::2], ours[1::2], strict=True)) == expected


def test_single_teacher_takes_its_raw_unreviewed_texts(records, paper_seed_files):
    rationale_file = json.loads(paper_seed_files[1].read_text())
    examples, report = build_examples(records, SVAMP, "gpt", seed=0, prompt_format="chat", filter="none")
    assert report.rationale_examples == report.feedback_examples == 387 and report.skipped == {}
    assert [e.completion for e in kinds_of(examples, "rationale")] == [r["gpt_rationale"][0].strip() for r in rationale_file]
    assert {e.teacher for e in examples} == {"gpt"}
    assert report.per_teacher["gpt"] == {"feedback": 387, "rationale": 387}


def test_all_takes_every_accepted_rationale_and_every_feedback(records):
    examples, report = build_examples(records, SVAMP, "all", seed=0, prompt_format="chat")
    assert report.rationale_examples == 286 + 221 + 319 == 826
    assert {t: c["rationale"] for t, c in report.per_teacher.items()} == {"gpt": 286, "gemini": 221, "mistral": 319}
    assert report.feedback_examples == 3 * 365 and report.skipped == {"no accepted rationale": 22}


def test_no_review_ignores_the_reviews(records):
    examples, report = build_examples(records, SVAMP, "mixed", seed=0, prompt_format="chat", filter="none")
    assert report.rationale_examples == report.feedback_examples == 387 and report.skipped == {}
    accepted = {(r["id"], t["text"].strip()) for r in records for t in r["rationales"].values() if t["accepted"]}
    assert any((e.mistake_id, e.completion) not in accepted for e in kinds_of(examples, "rationale"))


def grades_gold(record: dict, text: str) -> bool:
    mistake = StudentAnswer.from_json(record["mistake"], "test")
    return bool(SVAMP.grade(text, mistake.example()).correct)


def test_gold_filter_keeps_exactly_the_rationales_that_grade_correct(records):
    by_id = {r["id"]: r for r in records}
    gold = {(r["id"], t) for r in records for n, e in r["rationales"].items()
            if (t := usable_text(e)) and grades_gold(r, t)}
    examples, report = build_examples(records, SVAMP, "all", seed=0, prompt_format="chat", filter="gold")
    assert {(e.mistake_id, e.completion) for e in kinds_of(examples, "rationale")} == gold
    assert 0 < len(gold) < sum(len(r["rationales"]) for r in records)  # the check removes some, not all
    skipped = sum(not any(i == r["id"] for i, _ in gold) for r in records)
    assert report.skipped == ({"no rationale with the gold answer": skipped} if skipped else {})
    both, _ = build_examples(records, SVAMP, "all", seed=0, prompt_format="chat", filter="gold+review")
    assert {(e.mistake_id, e.completion) for e in kinds_of(both, "rationale")} == {
        (i, t) for i, t in gold if any(e.get("accepted") and usable_text(e) == t
                                       for e in by_id[i]["rationales"].values())}
    mixed, _ = build_examples(records, SVAMP, "mixed", seed=0, prompt_format="chat", filter="gold")
    assert {(e.mistake_id, e.completion) for e in kinds_of(mixed, "rationale")} <= gold


def test_unknown_filter_is_one_line(records):
    with pytest.raises(FairError, match="unknown filter 'gold-only': choose review, gold, gold\\+review, none"):
        build_examples(records, SVAMP, "mixed", seed=0, filter="gold-only")


def test_unknown_teacher_names_the_teachers(records):
    with pytest.raises(FairError, match="'claude'.*gpt, gemini, mistral"):
        build_examples(records, SVAMP, "claude", seed=0, prompt_format="chat")


def test_same_seed_same_examples_other_seed_other_choices(records):
    a, _ = build_examples(records, SVAMP, "mixed", seed=1, prompt_format="chat")
    b, _ = build_examples(records, SVAMP, "mixed", seed=1, prompt_format="chat")
    c, _ = build_examples(records, SVAMP, "mixed", seed=2, prompt_format="chat")
    assert a == b
    assert [e.mistake_id for e in a] == [e.mistake_id for e in c] and a != c


def test_failures_are_skipped_and_counted_by_reason(records):
    few = copy.deepcopy(records[:4])
    for entry in few[0]["feedback"].values():
        entry |= {"text": None, "error": "timeout"}
    few[1]["rationales"]["gpt"]["text"] = "   "
    del few[2]["feedback"]["gpt"]
    for entry in few[3]["rationales"].values():
        entry["text"] = None
    _, report = build_examples(few, SVAMP, "gpt", seed=0, prompt_format="chat", filter="none")
    assert report.skipped == {"feedback failed": 1, "rationale failed": 2, "teacher missing": 1}
    _, report = build_examples(few, SVAMP, "mixed", seed=0, prompt_format="chat", filter="none")
    assert report.skipped == {"feedback failed": 1, "rationale failed": 1} and report.rationale_examples == 2
