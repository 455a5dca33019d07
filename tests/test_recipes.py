"""Recipes (issue 24): the committee's filters (review, gold, gold+review, none) send only the requests they need
and record what qualifies; several rationale samples per teacher; training follows the committee's filter and
reads samples as their teacher's; the API cost of a recipe's data; and decontamination's figures on SVAMP."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from fair.decontam import Index, clean_ids, drop_contaminated, example_text, ngrams
from fair.errors import FairError
from fair.jsonl import read_jsonl
from fair.paper import import_committee
from fair.prices import Prices, bill, data_cost, load_prices
from fair.recipes import recorded_filter, run_filter
from fair.records import StudentAnswer
from fair.tasks import get_task
from gen.committee.run import CommitteeConfig, committee
from gen.teachers.cache import key_for
from gen.teachers.config import load_committee
from gen.teachers.providers import ChatResponse, OpenAIProvider
from train.data import build_examples, load_records

SVAMP = get_task("svamp")


def config(teachers, mistakes, **changes) -> CommitteeConfig:
    return CommitteeConfig(task="svamp", teachers=str(teachers), mistakes=str(mistakes), progress=False, **changes)


def golds(mistakes) -> list[str]:
    return [r["gold"] for r in read_jsonl(mistakes)]


def teaching(mistakes):
    """Scripts: a solves every mistake, b the even-numbered ones (an odd one's answer is off by one), c none;
    every review scores 4 (peers accept all)."""
    gold = golds(mistakes)

    def script(right) -> object:
        def answer(kind: str, number: int) -> ChatResponse:
            value = float(gold[number]) + (0 if right(number) else 1)
            text = {"feedback": "You subtracted where you should add.", "review": "Sound. [4]",
                    "rationale": f"Step 1: work it out.\nThe answer is {value:g}."}[kind]
            return ChatResponse(text, 1000, 100)
        return answer

    return {"a": script(lambda n: True), "b": script(lambda n: n % 2 == 0), "c": script(lambda n: False)}


def run(scripted, **changes) -> tuple[list[dict], Counter]:
    teachers, mistakes, scripts, sent = scripted
    scripts |= teaching(mistakes)
    sent.clear()
    committee(config(teachers, mistakes, **changes))
    return list(read_jsonl(mistakes.with_name("committee.jsonl"))), Counter(kind for _, kind, _, _ in sent)


def rationale_grades(record: dict) -> dict[str, bool]:
    mistake = StudentAnswer.from_json(record["mistake"], "test")
    return {k: SVAMP.grade(r["text"], mistake.example()).correct is True for k, r in record["rationales"].items()}


# ----------------------------------------------------------------------------------------------------------
# The committee


def test_gold_filter_sends_no_review_request_and_accepts_exactly_the_correct_rationales(scripted):
    records, kinds = run(scripted, filter="gold")
    assert kinds == {"feedback": 18, "rationale": 18}  # 2T = 6 requests a mistake, no review
    for record in records:
        assert record["filter"] == "gold" and record["samples"] == 1
        grades = rationale_grades(record)
        assert {k: (r["gold"], r["accepted"], r["reviews"]) for k, r in record["rationales"].items()} == \
            {k: (g, g, {}) for k, g in grades.items()}
    stats = orjson.loads(scripted[1].with_name("committee_stats.json").read_bytes())
    assert stats["filter"] == "gold"
    assert {n: (o["written"], o["gold"], o["accepted"]) for n, o in stats["outcomes"].items()} == \
        {"a": (6, 6, 6), "b": (6, 3, 3), "c": (6, 0, 0)}


def test_none_sends_no_review_and_gold_review_reviews_only_the_rationales_that_pass(scripted, tmp_path):
    records, kinds = run(scripted, filter="none")
    assert kinds == {"feedback": 18, "rationale": 18}
    assert all(r["accepted"] for record in records for r in record["rationales"].values())
    teachers, mistakes, _, _ = scripted
    records, kinds = run(scripted, filter="gold+review", out=str(tmp_path / "gr" / "committee.jsonl"))
    records = list(read_jsonl(tmp_path / "gr" / "committee.jsonl"))
    # 9 of 18 rationales pass the gold check (a's 6, b's 3), each reviewed by the 2 others: 18 reviews, not 36.
    assert kinds == {"feedback": 18, "rationale": 18, "review": 18}
    for record in records:
        for key, r in record["rationales"].items():
            assert bool(r["reviews"]) == r["gold"] == r["accepted"], key


def test_the_default_is_the_gold_check_with_no_review_request(scripted):
    records, kinds = run(scripted)
    assert kinds == {"feedback": 18, "rationale": 18}  # 2T = 6 a mistake
    assert {record["filter"] for record in records} == {"gold"}


def test_a_folder_of_the_old_default_is_refused_before_mining_with_the_flag_that_continues_it(tmp_path):
    from cli.pipeline import GenConfig, check_teachers

    gen = GenConfig(task="svamp", teachers="offline", out=str(tmp_path))
    out = gen.committee_config().out_path
    out.write_bytes(orjson.dumps({"id": "chal-1", "filter": "review"}) + b"\n")  # as a run before gold was the default
    with pytest.raises(FairError, match="record 0: written with --filter review, not gold: one file holds one recipe; "
                                        "rerun with --filter review to continue it"):
        check_teachers(gen)
    check_teachers(GenConfig(task="svamp", teachers="offline", out=str(tmp_path), filter="review"))


def test_review_is_the_papers_and_a_folder_keeps_its_filter(scripted):
    records, kinds = run(scripted, filter="review")
    assert kinds == {"feedback": 18, "rationale": 18, "review": 36}  # T(T + 1) = 12 a mistake
    assert all(r["accepted"] and r["mean_score"] == 4 for record in records for r in record["rationales"].values())
    with pytest.raises(FairError, match="written with --filter review, not gold"):
        run(scripted, filter="gold")


@pytest.mark.parametrize("filter, change, said", [
    ("gold", {"teacher_temperature": 0.7}, "teacher temperatures a 0, b 0, c 0, not a 0.7, b 0.7, c 0.7"),
    ("gold", {"samples": 2}, "--samples 1, not 2"), ("review", {"threshold": 4.0}, "--threshold 3.0, not 4.0"),
    ("gold", {"prompts": "paper"}, "--prompts fair-v3, not paper-v3")])
def test_an_output_keeps_its_recipe_and_refusing_sends_nothing(scripted, filter, change, said):
    records, _ = run(scripted, filter=filter)
    with pytest.raises(FairError, match=rf"committee.jsonl record 0: written with {said}: one file holds one recipe"):
        run(scripted, filter=filter, **change)
    assert not scripted[3]  # nothing sent
    assert list(read_jsonl(scripted[1].with_name("committee.jsonl"))) == records
    run(scripted, filter=filter, threshold=4.0 if filter == "gold" else 3.0)  # under gold the threshold decides nothing


def test_samples_are_distinct_seeded_requests_each_checked_and_their_teachers(scripted):
    teachers, mistakes, _, sent = scripted
    records, kinds = run(scripted, filter="gold", samples=3)
    assert kinds == {"feedback": 18, "rationale": 54}
    a = next(t for t in load_committee(str(teachers)) if t.name == "a")
    first = [request for name, kind, n, request in sent if (name, kind, n) == ("a", "rationale", 0)]
    assert sorted(r.sample for r in first) == [0, 1, 2] and len({key_for(a, r) for r in first}) == 3
    bodies = [OpenAIProvider(a, None).body(r) for r in sorted(first, key=lambda r: r.sample)]
    assert "seed" not in bodies[0] and [b["seed"] for b in bodies[1:]] == [1, 2]  # the first is a 1-sample run's
    for record in records:
        assert set(record["rationales"]) == {f"{t}{s}" for t in "abc" for s in ("", "#2", "#3")}
    # All of a's samples say the same (its script ignores the seed): `all` trains each text once; a's name takes
    # its own samples; `mixed` one among all.
    loaded = load_records(mistakes.with_name("committee.jsonl"), SVAMP)
    examples, report = build_examples(loaded, SVAMP, "all", seed=0, filter="gold")
    assert Counter(e.teacher for e in examples if e.kind == "rationale") == {"a": 6, "b": 3}
    assert report.per_teacher.keys() == {"a", "b", "c"}
    examples, _ = build_examples(loaded, SVAMP, "b", seed=0, filter="gold")
    assert Counter(e.kind for e in examples) == {"feedback": 3, "rationale": 3}
    assert Counter(e.kind for e in build_examples(loaded, SVAMP, "mixed", seed=0, filter="gold")[0]) == \
        {"feedback": 6, "rationale": 6}


# ----------------------------------------------------------------------------------------------------------
# Training reads what the committee ran


def test_a_gold_filtered_record_set_is_exactly_the_records_whose_rationales_grade_correct(scripted):
    records, _ = run(scripted, filter="review")  # reviewed: every filter may train on it
    loaded = load_records(scripted[1].with_name("committee.jsonl"), SVAMP)
    examples, _ = build_examples(loaded, SVAMP, "all", seed=0, filter="gold")
    chosen = {(e.mistake_id, e.teacher) for e in examples if e.kind == "rationale"}
    assert chosen == {(r["id"], k) for r in records for k, right in rationale_grades(r).items() if right}
    assert run_filter(map(recorded_filter, loaded), "test") == "review"


def test_training_follows_the_committee_and_refuses_reviews_it_never_asked_for(scripted):
    run(scripted, filter="gold")
    loaded = load_records(scripted[1].with_name("committee.jsonl"), SVAMP)
    assert run_filter(map(recorded_filter, loaded), "test") == "gold"
    for filter in ("review", "gold+review"):
        with pytest.raises(FairError, match="committee ran with --filter gold"):
            build_examples(loaded, SVAMP, "mixed", seed=0, filter=filter)
    assert build_examples(loaded, SVAMP, "mixed", seed=0, filter="none")[1].skipped == {}


# ----------------------------------------------------------------------------------------------------------
# The cost of a recipe's data


def test_data_cost_counts_reviews_only_where_the_recipe_needs_them(scripted):
    records, _ = run(scripted, filter="review")
    prices = {n: Prices(1.0, 4.0, 0.25) for n in "abc"}
    reply = bill(prices["a"], ChatResponse("", 1000, 100).usage)  # every scripted reply: 1000 in, 100 out
    # 6 mistakes x (3 feedbacks + 3 rationales), plus 2 reviews of each rationale reviewed: all 18 under review,
    # the 9 that pass the gold check (a's 6, b's 3) under gold+review.
    expected = {"review": 36 + 36, "gold+review": 36 + 18, "gold": 36, "none": 36}
    for filter, requests in expected.items():
        cost = data_cost(records, prices, filter, SVAMP)
        assert cost.total.requests == requests and cost.estimated == 0, filter
        assert cost.total.usd == pytest.approx(requests * reply)
        assert cost.total.input_tokens == 1000 * cost.total.requests
    assert data_cost(records, prices, "gold", SVAMP).by_kind["review"].requests == 0
    run(scripted, filter="gold", out=str(scripted[1].with_name("gold") / "committee.jsonl"))
    gold_records = list(read_jsonl(scripted[1].with_name("gold") / "committee.jsonl"))
    with pytest.raises(FairError, match="never asked"):
        data_cost(gold_records, prices, "review", SVAMP)


def test_data_cost_of_the_papers_files_is_estimated_at_its_teachers_prices(data_dir):
    seed = data_dir / "seed"
    records = import_committee(SVAMP, seed / "Llama-2-7b-chat-hf_svamp_feedback_round0.json",
                               seed / "Llama-2-7b-chat-hf_svamp_rationale_round0.json", SVAMP.load("train", data_dir))
    prices = load_prices("paper")
    fair, gold = (data_cost(records, prices, f, SVAMP) for f in ("review", "gold"))
    assert fair.mistakes == gold.mistakes == 387 and fair.estimated == fair.total.requests
    assert gold.total.requests == 387 * 6 and gold.by_kind["review"].requests == 0
    assert fair.by_kind["review"].requests == 2 * sum(r["text"] is not None for rec in records
                                                      for r in rec["rationales"].values())
    assert 0 < gold.total.usd < fair.total.usd
    assert fair.by_kind["review"].output_tokens == 150 * fair.by_kind["review"].requests  # no review text kept


# ----------------------------------------------------------------------------------------------------------
# Decontamination


def test_svamp_overlap_figures_of_the_issue(data_dir):
    index = Index(example_text(e) for e in SVAMP.load("train", data_dir))
    overlaps = [index.overlap(example_text(e)) for e in SVAMP.load("test", data_dir)]
    assert len(overlaps) == 300
    assert sum(o.shared > 0 for o in overlaps) == 227  # share at least one 8-gram with a train question
    assert sum(o.contaminated for o in overlaps) == 29  # more than half of their 8-grams
    assert len(clean_ids(SVAMP, "test", data_dir)) == 271


def test_ngrams_are_lower_cased_words_and_short_questions_have_none():
    assert ngrams("A b, C d e f g H i!") == {tuple("abcdefgh"), tuple("bcdefghi")}
    assert ngrams("only seven words in this one here") == set()
    assert not Index(["x y z"]).contaminated("only seven words in this one here")


def test_training_drops_the_mistakes_that_copy_a_test_question(data_dir, tmp_path):
    test = SVAMP.load("test", data_dir)
    records = [{"id": f"m{i}", "mistake": StudentAnswer.graded(SVAMP, e, "The answer is 0.", finish_reason="stop")
                .to_json()} for i, e in enumerate(SVAMP.load("train", data_dir)[:50])]
    copied = StudentAnswer.graded(SVAMP, test[0], "The answer is 0.", finish_reason="stop").to_json()
    records.append({"id": "copy", "mistake": copied})
    kept, report = drop_contaminated(records, SVAMP, data_dir)
    assert "copy" in report["dropped_ids"] and report["checked"] == 51 and report["against"] == "svamp test"
    assert [r["id"] for r in kept] == [r["id"] for r in records if r["id"] not in report["dropped_ids"]]


def test_evaluation_scores_the_clean_questions_apart(tmp_path, data_dir, fake_engine_cls):
    from eval.evaluate import EvalConfig, evaluate

    test = SVAMP.load("test", data_dir)
    clean = clean_ids(SVAMP, "test", data_dir)
    gold = {SVAMP.prompt(e): e.gold for e in test}
    dirty = {SVAMP.prompt(e) for e in test if e.id not in clean}
    # Right on every contaminated question, wrong on every clean one: accuracy 29/300, clean 0/271.
    engine = fake_engine_cls(lambda prompt: f"The answer is {gold[prompt] if prompt in dirty else -1}.")
    [row] = evaluate(EvalConfig(task=("svamp",), out=str(tmp_path)), engine)
    assert (row["correct"], row["total"], row["clean_correct"], row["clean_total"]) == (29, 300, 0, 271)
    summary = orjson.loads((tmp_path / "svamp-test" / "summary.json").read_bytes())
    assert summary["clean_accuracy"] == 0.0 and summary["clean_total"] == 271


def test_samples_leave_the_papers_shape_one_rationale_a_teacher(scripted):
    from fair.paper import export_committee

    records, _ = run(scripted, filter="gold", samples=2)
    for record, (feedback, rationale) in zip(records, export_committee(SVAMP, records), strict=True):
        assert {k for k in rationale if k.endswith("_rationale")} == {"a_rationale", "b_rationale", "c_rationale",
                                                                     "correct_rationale"}
        assert rationale["correct_rationale"] == [r["text"] for r in record["rationales"].values() if r["gold"]]
        assert rationale["a_rationale"][1:] == [0, 0]  # no review was asked
        assert {k for k in feedback if k.endswith("_feedback")} == {"a_feedback", "b_feedback", "c_feedback"}


def test_a_gold_run_in_the_papers_files_imports_back_as_gold(scripted, tmp_path, data_dir):
    from fair.paper import write_paper_files

    records, _ = run(scripted, filter="gold")
    feedback, rationale = write_paper_files(SVAMP, scripted[1].with_name("committee.jsonl"), "student_svamp")
    imported = import_committee(SVAMP, feedback, rationale, SVAMP.load("train", data_dir))
    assert {r["filter"] for r in imported} == {"gold"}
    assert [{k: v["accepted"] for k, v in r["rationales"].items()} for r in imported] == \
        [{k: v["accepted"] for k, v in r["rationales"].items()} for r in records]
    rows = orjson.loads(Path(rationale).read_bytes())
    rows[1]["filter"] = "peers"
    Path(rationale).write_bytes(orjson.dumps(rows))
    with pytest.raises(FairError, match=r"rationale_round0.json record 1: field filter: unknown filter 'peers'"):
        import_committee(SVAMP, feedback, rationale, SVAMP.load("train", data_dir))


def test_training_decontaminates_by_default_and_saves_the_committees_filter(tmp_path, tiny_model_dir, data_dir):
    import yaml

    from tests.conftest import tiny_train_config
    from train.train import train

    out = train(tiny_train_config(tmp_path, tiny_model_dir, data_dir, max_steps=1)).parent
    report = orjson.loads((out / "data_report.json").read_bytes())["decontamination"]
    assert report["checked"] == 387 and report["against"] == "svamp test" and report["threshold"] == 0.5
    assert 0 < report["dropped"] == len(report["dropped_ids"]) < 387
    assert yaml.safe_load((out / "train.yaml").read_text())["filter"] == "review"  # the paper's files' filter
    records = import_committee(SVAMP, data_dir / "seed" / "Llama-2-7b-chat-hf_svamp_feedback_round0.json",
                               data_dir / "seed" / "Llama-2-7b-chat-hf_svamp_rationale_round0.json",
                               SVAMP.load("train", data_dir))
    assert report["dropped"] == drop_contaminated(records, SVAMP, data_dir)[1]["dropped"]


def test_the_offline_committee_answers_each_sample_as_its_own_request(tmp_path, seed_mistakes):
    from simulator.server import OfflineServer
    from tests.conftest import fast, run_small_committee

    with OfflineServer(port=0) as server:
        teachers = fast(load_committee("offline", server.url))
        result, records = run_small_committee(tmp_path, seed_mistakes, teachers, limit=4, filter="gold", samples=2)
    # Sent, never a cache hit of the first sample (the simulator takes the OpenAI and Gemini seeds), and no review.
    assert {n: (s.requests, s.cache_hits) for n, s in result["stats"].items()} == dict.fromkeys(
        (t.name for t in teachers), (4 * 3, 0))
    for record in records:
        assert set(record["rationales"]) == {f"{t.name}{s}" for t in teachers for s in ("", "#2")}
        assert all(r["accepted"] == r["gold"] and not r["reviews"] for r in record["rationales"].values())
