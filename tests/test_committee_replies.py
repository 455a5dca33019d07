"""The committee with replies that are not whole answers, from scripted providers (no network): refusals and
replies cut off at max_tokens are recorded and counted, never reviewed, scored, accepted or trained on; a
teacher out of quota stops the run cleanly and a rerun finishes it without sending anything again. Also: our
prompts share their prefix across a mistake's requests (for the providers' prompt caches), and the Batch API's
drafts are the very requests the run sends."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import pytest

from cli.main import main
from eval.report import build_report
from fair.jsonl import read_jsonl
from fair.paper import export_committee
from fair.records import StudentAnswer, question_block
from fair.tasks import Example, get_task, task_names
from gen.committee.prompts import PROMPT_SETS, drafts
from gen.committee.run import CommitteeConfig, committee
from gen.teachers.cache import key_for
from gen.teachers.config import Teacher, load_committee
from gen.teachers.providers import ChatResponse, QuotaExhausted
from tests.conftest import ScriptedProvider, import_seed_mistakes
from train.data import build_examples, load_records


def reply(text: str, **flags) -> ChatResponse:
    return ChatResponse(text, 1000, 100, cached_input_tokens=600, **flags)


def config(teachers: Path, mistakes: Path, **changes) -> CommitteeConfig:
    """The paper's filter unless told: what a refused or cut-off reply does to the reviews is the question here."""
    return CommitteeConfig(task="svamp", teachers=str(teachers), mistakes=str(mistakes), progress=False,
                           **{"filter": "review"} | changes)


def good(kind: str, number: int) -> ChatResponse:
    return reply({"feedback": "You added where you should subtract.", "rationale": "Step 1: 5 - 2 = 3.\nThe answer is 3.",
                  "review": "Sound and complete. [4]"}[kind])


def cut_off(kind: str, number: int) -> ChatResponse:  # every reply reaches max_tokens; the review even has a score
    return reply({"feedback": "First, the student", "rationale": "Step 1: 5 - 2", "review": "Looks right [5"}[kind]
                 + " ... [5]" * (kind == "review"), truncated=True)


def refusing(kind: str, number: int) -> ChatResponse:
    if kind == "review":
        return good(kind, number)
    return reply("", refusal={"feedback": "SAFETY", "rationale": "RECITATION"}[kind])


def test_refused_and_cut_off_replies_are_recorded_counted_and_never_reviewed(scripted, capsys):
    teachers, mistakes, scripts, sent = scripted
    scripts |= {"a": good, "b": cut_off, "c": refusing}
    committee(config(teachers, mistakes))
    records = list(read_jsonl(mistakes.with_name("committee.jsonl")))
    assert len(records) == 6
    # Only a's rationale could be reviewed: b's was cut off and c's refused, and neither is ever sent for review.
    assert Counter((name, kind) for name, kind, _, _ in sent) == {
        ("a", "feedback"): 6, ("a", "rationale"): 6, ("b", "feedback"): 6, ("b", "rationale"): 6,
        ("b", "review"): 6, ("c", "feedback"): 6, ("c", "rationale"): 6, ("c", "review"): 6}
    for record in records:
        a, b, c = (record["rationales"][n] for n in "abc")
        assert b["truncated"] is True and b["text"] == "Step 1: 5 - 2" and b["refused"] is None
        assert (b["reviews"], b["mean_score"], b["accepted"]) == ({}, None, False)
        assert c["text"] is None and c["refused"] == "RECITATION" and c["error"] is None
        assert (c["reviews"], c["accepted"]) == ({}, False)
        # b's review was cut off: no score, although its text holds one; c's counts alone.
        assert a["reviews"]["b"]["score"] is None and a["reviews"]["b"]["truncated"] is True
        assert a["reviews"]["c"]["score"] == 4 and (a["mean_score"], a["accepted"]) == (4, True)
        billed = {"input_tokens": 1000, "output_tokens": 100, "cached_input_tokens": 600, "cache_write_tokens": 0,
                  "batch": False}  # each reply's own usage (fair/prices.py prices a recipe's data from it)
        assert record["feedback"]["b"] == {"text": "First, the student", "error": None, "truncated": True,
                                           "refused": None, "usage": billed}
        assert record["feedback"]["c"] == {"text": None, "error": None, "truncated": False, "refused": "SAFETY",
                                           "usage": billed}
        # Billed all the same, with the cached input at its own rate: 400 x 1.0 + 600 x 0.25 + out x 4.0 per reply.
        assert record["usage"]["c"]["cached_input_tokens"] == 3 * 600
        assert record["usage"]["c"]["cost"] == pytest.approx(3 * 950 / 1e6)

    stats = orjson.loads(mistakes.with_name("committee_stats.json").read_bytes())
    assert stats["stopped"] is None
    assert {n: (s["refused"], s["truncated"]) for n, s in stats["teachers"].items()} == \
        {"a": (0, 0), "b": (0, 18), "c": (12, 0)}
    assert stats["teachers"]["a"]["cached_input_tokens"] == 12 * 600
    assert stats["teachers"]["a"]["cost"] == pytest.approx(12 * (550 + 400) / 1e6)
    outcomes = stats["outcomes"]
    assert outcomes["c"]["refused"] == {"SAFETY": 6, "RECITATION": 6}
    assert outcomes["b"]["truncated"] == {"feedback": 6, "rationale": 6, "review": 6}
    assert {n: (o["written"], o["accepted"], o["failed"]) for n, o in outcomes.items()} == \
        {"a": (6, 6, 0), "b": (6, 0, 0), "c": (0, 0, 6)}

    table = capsys.readouterr().out
    assert (cell(table, "b", "refused"), cell(table, "b", "cut off"), cell(table, "c", "refused")) == ("0", "18", "12")
    assert (cell(table, "a", "cached in"), cell(table, "a", "accepted"), cell(table, "b", "accepted")) == \
        ("7200", "100%", "0%")
    assert "c: refused SAFETY x6, RECITATION x6; cut off at max_tokens: none" in table
    assert "b: refused none; cut off at max_tokens: 6 feedback, 6 rationale, 6 review" in table


def cell(table: str, teacher: str, column: str) -> str:
    """A cell of the teacher table: its columns are right-aligned under their names."""
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("teacher "))
    row = next(line for line in lines if line.startswith(f"{teacher} "))
    return row[: header.index(column) + len(column)].split()[-1]


def test_training_and_the_report_take_only_whole_texts(scripted, tmp_path, capsys):
    teachers, mistakes, scripts, _ = scripted
    scripts |= {"a": good, "b": cut_off, "c": refusing}
    committee(config(teachers, mistakes))
    out = mistakes.with_name("committee.jsonl")
    records = load_records(out, get_task("svamp"))  # the new fields read as before
    for mode, filter in (("all", "review"), ("mixed", "none"), ("b", "none"), ("c", "none"), ("all", "gold")):
        examples, report = build_examples(records, get_task("svamp"), mode, seed=0, filter=filter)
        assert all(e.teacher == "a" for e in examples), mode  # b's cut-off and c's refused texts never train
    assert build_examples(records, get_task("svamp"), "b", seed=0, filter="none")[1].skipped == {"rationale failed": 6}
    for feedback, rationale in export_committee(get_task("svamp"), records):  # the paper's files cannot mark them
        assert feedback["b_feedback"] is None and feedback["c_feedback"] is None and feedback["a_feedback"]
        assert rationale["b_rationale"][0] is None and rationale["correct_rationale"] == [good("rationale", 0).text]
    page = build_report(out.parent, None, None, None, tmp_path / "report").read_text()
    assert "| c | 0 | 0.0% | - | 6 SAFETY, 6 RECITATION | 0 | 18,000 | 10,800 | 1,800 | 0.0171 |" in page
    assert "| b | 6 | 0.0% | - | 0 | 18 | 18,000 | 10,800 | 1,800 | 0.0171 |" in page


def test_records_written_before_these_fields_still_read_and_train(tmp_path, data_dir):
    """An older committee.jsonl (no truncated, refused or cached tokens) trains and reports as before."""
    from fair.jsonl import append_jsonl

    mistakes = import_seed_mistakes(tmp_path, data_dir, count=2)
    old = [{"id": m["id"], "mistake": m, "feedback": {"x": {"text": "Fix the sum.", "error": None}},
            "rationales": {"x": {"text": "The answer is 3.", "error": None, "reviews": {}, "mean_score": 5.0,
                                 "accepted": True}},
            "usage": {"x": {"input_tokens": 10, "output_tokens": 5, "cost": 0.001}}} for m in read_jsonl(mistakes)]
    append_jsonl(tmp_path / "committee.jsonl", old)
    examples, _ = build_examples(load_records(tmp_path / "committee.jsonl", get_task("svamp")), get_task("svamp"),
                                 "all", seed=0)
    assert len(examples) == 4
    page = build_report(tmp_path, None, None, None, tmp_path / "report").read_text()
    assert "| x | 2 | 100.0% | - | 0 | 0 | 20 | 0 | 10 | 0.0020 |" in page


def test_a_teacher_out_of_quota_stops_the_run_and_a_rerun_finishes_it(scripted, capsys):
    teachers, mistakes, scripts, sent = scripted
    quota = {"ok": False}

    def out_of_credit(kind: str, number: int) -> ChatResponse:
        if number >= 2 and not quota["ok"]:
            raise QuotaExhausted("openai 429: You exceeded your current quota, please check your plan and billing")
        return good(kind, number)

    scripts |= {"a": good, "b": out_of_credit, "c": good}
    args = ["committee", "--task", "svamp", "--mistakes", str(mistakes), "--teachers", str(teachers),
            "--window", "2", "--no-progress"]
    assert main(args) == 2
    out = mistakes.with_name("committee.jsonl")
    first = out.read_bytes()
    written = {r["id"]: r for r in read_jsonl(out)}
    numbers = {r["id"]: n for n, r in enumerate(read_jsonl(mistakes))}
    assert 1 <= len(written) <= 2 and all(numbers[i] < 2 for i in written)  # what finished, and only that
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1:] == [f"fair committee: error: teacher b: the account is out of quota (openai 429: You exceeded your "
                   f"current quota, please check your plan and billing); {6 - len(written)} of 6 mistakes remain; "
                   "rerun once the account has credit"]
    stats = orjson.loads(mistakes.with_name("committee_stats.json").read_bytes())
    assert stats["written"] == len(written) and "out of quota" in stats["stopped"]
    refused_sends = Counter(id(request) for name, _, n, request in sent if name == "b" and n >= 2)
    assert refused_sends and set(refused_sends.values()) == {1}  # each sent once, never retried

    first_run = list(sent)
    sent.clear()
    quota["ok"] = True
    assert main(args) == 0
    assert out.read_bytes().startswith(first)  # nothing written is lost or rewritten
    records = list(read_jsonl(out))
    assert sorted(r["id"] for r in records) == sorted(numbers)
    # Nothing answered before is sent again: the written mistakes are skipped, the replies the cancelled ones
    # had are in the cache.
    answered = {key_for(load_teacher(teachers, name), request) for name, _, n, request in first_run
                if not (name == "b" and n >= 2)}
    again = {key_for(load_teacher(teachers, name), request) for name, _, _, request in sent}
    assert not answered & again
    assert not {n for _, _, n, _ in sent} & {numbers[i] for i in written}


def test_a_quota_stop_lets_the_requests_in_flight_land_and_a_rerun_does_not_pay_for_them_again(scripted, monkeypatch,
                                                                                                 capsys):
    """Teacher b's account runs dry while teacher a's requests are in flight: those are paid for, so the run waits
    for their replies (into the cache) before it stops, instead of cancelling them to be sent again."""
    teachers, mistakes, scripts, sent = scripted
    quota, landed = {"ok": False}, []
    play = ScriptedProvider.complete

    async def slow(self, request):
        response = await play(self, request)  # b raises at once; a answers after a while
        if self.name == "a":
            await asyncio.sleep(0.2)
            landed.append(request)
        return response

    def out_of_credit(kind: str, number: int) -> ChatResponse:
        if not quota["ok"]:
            raise QuotaExhausted("openai 429: You exceeded your current quota, please check your plan and billing")
        return good(kind, number)

    monkeypatch.setattr(ScriptedProvider, "complete", slow)
    scripts |= {"a": good, "b": out_of_credit, "c": good}
    args = ["committee", "--task", "svamp", "--mistakes", str(mistakes), "--teachers", str(teachers),
            "--window", "2", "--no-progress"]
    assert main(args) == 2
    sent_to_a = [request for name, _, _, request in sent if name == "a"]
    assert sent_to_a and len(landed) == len(sent_to_a)  # none cancelled in flight
    a = load_teacher(teachers, "a")
    first = {key_for(a, request) for request in sent_to_a}
    sent.clear()
    quota["ok"] = True
    capsys.readouterr()
    assert main(args) == 0
    assert not first & {key_for(a, request) for name, _, _, request in sent if name == "a"}
    assert "resuming:" not in capsys.readouterr().out  # the requests cancelled at the stop had not been sent


def load_teacher(path: Path, name: str) -> Teacher:
    return next(t for t in load_committee(str(path)) if t.name == name)


# ----------------------------------------------------------------------------------------------------------
# The prompts


@pytest.mark.parametrize("task_name", task_names())
def test_a_mistakes_prompts_share_the_system_message_and_question_as_their_prefix(task_name):
    task = get_task(task_name)
    option = task.answer_type == "option"
    example = Example("x-1", 1, "train", "Which of these follows? It is a question\n\nof two paragraphs.",
                      "B" if option else "yes" if task.answer_type == "yesno" else "3",
                      context="A passage.\n\nIn two paragraphs." if option else "",
                      options=("one", "two", "three", "four") if option else ())
    answer = StudentAnswer.graded(task, example, "I think it is 7.\nThe answer is 7.", finish_reason="stop",
                                  generated_tokens=10)
    prompts = PROMPT_SETS["fair"]
    requests = [prompts.feedback(task, answer), prompts.rationale(task, answer),
                prompts.review(task, answer, "Step 1.\nThe answer is 3.")]
    prefix = f"Question:\n{question_block(task, answer)}\n\n"
    assert len({r[0] for r in requests}) == 1  # one system message
    for (_, user) in (r[1] for r in requests):
        assert user.startswith(prefix) and user.count(question_block(task, answer)) == 1
    # The rationale asks what the student was asked, after the shared prefix.
    assert requests[1][1][1] == prefix + task.prompt(answer.example()).removeprefix(question_block(task, answer)).lstrip()


@pytest.mark.parametrize("samples", [1, 3])
def test_the_batch_drafts_are_the_requests_the_run_sends(scripted, samples):
    teachers, mistakes, scripts, sent = scripted
    scripts |= {"a": good, "b": good, "c": good}
    committee(config(teachers, mistakes, limit=2, samples=samples))
    members = load_committee(str(teachers))
    answers = [StudentAnswer.from_json(r, "test") for r in list(read_jsonl(mistakes))[:2]]
    draft_keys = {key_for(t, r) for t, r in drafts(answers, get_task("svamp"), PROMPT_SETS["fair"], members, samples)}
    run_keys = {key_for(load_teacher(teachers, name), r) for name, kind, _, r in sent if kind != "review"}
    assert draft_keys == run_keys and len(draft_keys) == 2 * (1 + samples) * 3
