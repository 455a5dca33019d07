"""fair estimate: its numbers are consistent (cost = tokens x price, linear in mistakes, keys add throughput)
and they predict what gen/committee/run.py really sends, checked against a run on the offline committee."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from fair.cli import main
from fair.config import make_config
from fair.tasks import get_task
from gen.committee.estimate import EstimateConfig, costs, estimate
from gen.committee.run import CommitteeConfig, committee
from gen.offline.server import OfflineServer
from gen.teachers.config import load_committee
from tests.conftest import import_seed_mistakes


def run(tmp_path, **overrides) -> dict:
    values = {"task": "svamp", "teachers": "default", "mistakes": str(tmp_path / "absent.jsonl")} | overrides
    return estimate(make_config(EstimateConfig, values, source="test"))


def test_cost_is_tokens_times_price_and_linear_in_mistakes(tmp_path, data_dir):
    one, two = run(tmp_path, num_mistakes=1000), run(tmp_path, num_mistakes=2000)
    prices = {t.name: t for t in load_committee("default")}
    for name, row in one["teachers"].items():
        teacher = prices[name]
        assert row["requests"] == 4 * 1000  # feedback, rationale, and reviews of the 2 other rationales
        assert row["cost_usd"] == pytest.approx((row["input_tokens"] * teacher.price_input
                                                 + row["output_tokens"] * teacher.price_output) / 1e6)
        for key in ("requests", "input_tokens", "output_tokens", "cost_usd", "batch_cost_usd", "hours"):
            assert two["teachers"][name][key] == pytest.approx(2 * row[key])
        # Without a committee run to measure, outputs are the defaults: 1 feedback + 1 rationale + 2 reviews.
        assert row["output_tokens"] == pytest.approx(1000 * (300 + 300 + 2 * 150))
    assert one["total"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in one["teachers"].values()))
    assert one["total"]["hours"] == max(r["hours"] for r in one["teachers"].values())
    assert one["requests_per_mistake"] == 12


def test_batch_price_halves_feedback_and_rationales_of_openai_teachers_only(tmp_path, data_dir):
    result = run(tmp_path, num_mistakes=500)
    gpt, gemini = result["teachers"]["gpt"], result["teachers"]["gemini"]
    assert gemini["batch_cost_usd"] == gemini["cost_usd"]
    inputs = result["input_tokens_per_request"]
    batchable = 500 * ((inputs["feedback"] + inputs["rationale"]) * 0.40 + (300 + 300) * 1.60) / 1e6
    assert gpt["batch_cost_usd"] == pytest.approx(gpt["cost_usd"] - batchable / 2)


def test_mistakes_are_given_counted_or_assumed(tmp_path, data_dir):
    assumed = run(tmp_path, limit=300, mistake_rate=0.3)
    assert assumed["mistakes"] == 90 and "300 train examples x mistake rate 0.3" in assumed["mistakes_source"]
    assert assumed["sample"] == 200
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=7)
    counted = run(tmp_path, mistakes=str(mistakes), mistake_rate=0.3)
    assert counted["mistakes"] == 7 and counted["sample"] == 7
    assert run(tmp_path, mistakes=str(mistakes), num_mistakes=12)["mistakes"] == 12


def test_api_keys_multiply_throughput(data_dir):
    teachers = load_committee("default")
    unit = {t.name: {"requests": 4, "batchable_input": 500.0, "batchable_output": 600.0, "review_input": 800.0,
                     "review_output": 300.0} for t in teachers}
    one_key = costs(teachers, unit, 10_000)["teachers"]["claude"]
    two_keys = [dataclasses.replace(t, api_key_env=("KEY_A", "KEY_B")) if t.name == "claude" else t for t in teachers]
    doubled = costs(two_keys, unit, 10_000)["teachers"]["claude"]
    assert (doubled["api_keys"], one_key["api_keys"]) == (2, 1)
    assert doubled["hours"] == pytest.approx(one_key["hours"] / 2) and doubled["cost_usd"] == one_key["cost_usd"]
    # claude's limits: 50 rpm binds (4e4 requests / 50 = 800 min) over 50k tpm (2.2e7 tokens / 5e4 = 440 min)
    assert one_key["hours"] == pytest.approx(40_000 / 50 / 60)


def test_estimate_predicts_an_offline_committee_run(tmp_path, data_dir, capsys):
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=5)
    with OfflineServer(port=0) as server:
        committee(CommitteeConfig(task="svamp", mistakes=str(mistakes), teachers="offline", base_url=server.url,
                                  progress=False))
    actual = orjson.loads((tmp_path / "committee_stats.json").read_bytes())["teachers"]
    result = run(tmp_path, teachers="offline", mistakes=str(mistakes))
    assert result["output_tokens_source"] == "committee_stats" and result["mistakes"] == 5
    for name, row in result["teachers"].items():
        # What committee.py asked for: sent, or answered from its cache when two requests were the same prompt
        # (two peers' identical rationales make one review request twice; which way depends on timing). So the
        # tokens are compared per request sent.
        sent = actual[name]["requests"]
        assert row["requests"] == sent + actual[name]["cache_hits"] == 5 * 4
        assert row["output_tokens"] / row["requests"] == pytest.approx(actual[name]["output_tokens"] / sent)
        # Inputs: the same prompts, counted at ~4 characters a token (the simulator counts the same way);
        # reviews hold the real rationales, estimated at their authors' mean reply length.
        assert row["input_tokens"] / row["requests"] == pytest.approx(actual[name]["input_tokens"] / sent, rel=0.06)
    capsys.readouterr()


def test_estimate_through_the_cli(tmp_path, data_dir, capsys):
    code = main(["estimate", "--task", "gsm8k", "--teachers", "offline", "--num-mistakes", "10", "--sample", "20",
                 "--mistakes", str(tmp_path / "absent.jsonl"), "--json"])
    result = orjson.loads(capsys.readouterr().out)
    assert code == 0 and result["total"]["requests"] == 120 and result["sample"] == 20
    code = main(["estimate", "--task", "gsm8k", "--teachers", "offline", "--mistakes", str(tmp_path / "absent.jsonl")])
    table = capsys.readouterr().out
    rows = round(len(get_task("gsm8k").load("train")) * 0.5)
    assert code == 0 and f"{rows:,} mistakes" in table and "careful" in table and "total" in table
