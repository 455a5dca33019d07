"""report.md reads as a page: tables and words, never a Python dict, list, None or bool printed as it is."""

from __future__ import annotations

import json
import re

import pytest

from eval.report import build_report
from fair.errors import FairError
from fair.jsonl import append_jsonl, read_jsonl
from tests.conftest import import_seed_mistakes

PYTHON_LITERAL = re.compile(r"\{'|\['|\bNone\b|\bTrue\b|\bFalse\b")


def rationale(text: str, scores: dict, accepted: bool) -> dict:
    valid = [s for s in scores.values() if s is not None]
    return {"text": text, "error": None, "accepted": accepted, "mean_score": sum(valid) / len(valid) if valid else None,
            "reviews": {r: {"score": s, "reply": None, "error": None} for r, s in scores.items()}}


def write_run(tmp_path, data_dir):
    """A whole run's files, as the stages write them: mining, the committee, training, two evaluations."""
    gen = tmp_path / "gen"
    gen.mkdir()
    mistakes = list(read_jsonl(import_seed_mistakes(gen, data_dir, count=3)))
    append_jsonl(gen / "committee.jsonl", [{
        "id": m["id"], "mistake": m, "feedback": {"gpt": {"text": "Check the sum.", "error": None}},
        "rationales": {"gpt": rationale(f"So the answer is {m['gold']}.", {"gemini": 4.0, "mistral": None}, True),
                       "gemini": rationale("The answer is 1.", {"gpt": 2.0, "mistral": 1.5}, False)},
        "usage": {"gpt": {"input_tokens": 10, "output_tokens": 5, "cost": 0.001}}} for m in mistakes])
    (gen / "stats.json").write_text(json.dumps({"correct": 7, "total": 10, "accuracy": 0.7, "mistakes": 3,
                                                "this_run": {"seconds": 1.5}}))
    (gen / "committee_stats.json").write_text(json.dumps({"seconds": 2.0, "stopped": "gpt is out of quota"}))
    for when, right in (("before", [True, False, False]), ("after", [True, True, False])):
        folder = tmp_path / when
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({
            "task": "svamp", "split": "test", "model": f"student-{when}", "total": 3, "correct": sum(right),
            "accuracy": sum(right) / 3, "unparseable": 0, "seconds": 1.0}))
        append_jsonl(folder / "predictions.jsonl", [{"id": f"q{i}", "correct": c} for i, c in enumerate(right)])
    train = tmp_path / "train"
    train.mkdir()
    append_jsonl(train / "log.jsonl", [{"step": s, "loss": 2.0 / s, "feedback_loss": None, "rationale_loss": 1.0}
                                       for s in (1, 2)])
    (train / "train_summary.json").write_text(json.dumps({"seconds_this_run": 3.0}))
    return gen, train


def test_report_md_holds_no_python_literal(tmp_path, data_dir):
    gen, train = write_run(tmp_path, data_dir)
    page = build_report(gen, train, tmp_path / "before", tmp_path / "after", tmp_path / "report").read_text()
    prose = re.sub(r"`[^`]*`", "", page)  # code spans name models and paths as they are
    assert not PYTHON_LITERAL.findall(prose), [line for line in prose.splitlines() if PYTHON_LITERAL.search(line)]
    assert "| accepted | 3 | 0 |" in page and "| rejected | 0 | 3 |" in page  # the verdicts, as a table
    assert "(by gpt; scores: gemini 4, mistral no score)" in page
    assert "(by gemini; scores: gpt 2, mistral 1.5)" in page


def test_a_gold_run_is_reported_as_a_gold_run(tmp_path, data_dir):
    gen, _ = write_run(tmp_path, data_dir)
    records = list(read_jsonl(gen / "committee.jsonl"))
    for record in records:  # as a `--filter gold` run writes them: no reviews, accepted = the gold check
        record["filter"] = "gold"
        for r in record["rationales"].values():
            r |= {"reviews": {}, "mean_score": None}
    (gen / "committee.jsonl").unlink()
    append_jsonl(gen / "committee.jsonl", records)
    page = build_report(gen, None, None, None, tmp_path / "report").read_text()
    assert "Filter gold: a rationale is accepted when the task's grader finds the gold answer in it" in page
    assert "Review agreement" not in page and "Peer review against the gold answer" not in page


def test_the_literal_check_finds_what_it_forbids():
    assert len(PYTHON_LITERAL.findall("scores {'sloppy': 4.0} ['a'] None True False")) == 5
    assert not PYTHON_LITERAL.findall("Nonetheless, a [link](x) {x}; Truer words")


def test_a_task_declared_outside_configs_tasks_is_named_by_its_path(tmp_path, monkeypatch):
    """The records name a declared task by its file's name, which finds only configs/tasks/<name>.yaml: a task
    file elsewhere (`fair loop --task path/quiz.yaml`, whose every round ends in this report) is passed as given."""
    (tmp_path / "quiz.csv").write_text("question,answer\nCapital of France?,Paris\n")
    (tmp_path / "quiz.yaml").write_text("splits: {train: quiz.csv}\n")
    monkeypatch.chdir(tmp_path)
    gen = tmp_path / "gen"
    gen.mkdir()
    mistake = {"id": "train-0", "index": 0, "task": "quiz", "split": "train", "question": "Capital of France?",
               "gold": "Paris", "prediction": "The answer is Lyon.", "extracted": "lyon", "correct": False,
               "prompt_tokens": 5, "generated_tokens": 5, "finish_reason": "stop"}
    append_jsonl(gen / "committee.jsonl", [{
        "id": "train-0", "mistake": mistake, "feedback": {}, "usage": {},
        "rationales": {"gpt": rationale("The answer is Paris.", {"gemini": 5.0}, True)}}])
    page = build_report(gen, None, None, None, tmp_path / "report", task="quiz.yaml").read_text()
    assert "| accepted | 1 | 0 |" in page  # the rationale was graded by the quiz's grader: it reaches the gold
    with pytest.raises(FairError, match="committee record train-0: task 'quiz'.*--task"):
        build_report(gen, None, None, None, tmp_path / "report")
    (gen / "committee.yaml").write_text("task: quiz.yaml\n")  # what `fair committee` saves: the task as given
    assert "| accepted | 1 | 0 |" in build_report(gen, None, None, None, tmp_path / "report").read_text()
    monkeypatch.chdir(gen)  # from another folder its relative path finds nothing: then only --task can
    with pytest.raises(FairError, match="committee record train-0: task 'quiz'.*--task"):
        build_report(gen, None, None, None, tmp_path / "report")
