"""fair estimate: its numbers are consistent (cost = tokens x price, linear in mistakes, keys add throughput)
and they predict what gen/committee/run.py really sends, checked against a run on the offline committee."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from cli.main import main
from fair.config import make_config
from fair.tasks import get_task
from gen.committee.estimate import EstimateConfig, costs, estimate
from gen.committee.run import CommitteeConfig, committee
from gen.teachers.config import load_committee
from simulator.server import OfflineServer
from tests.conftest import import_seed_mistakes


def run(tmp_path, **overrides) -> dict:
    """The paper's filter unless told: its review requests are the ones whose tokens are hardest to predict."""
    values = {"task": "svamp", "teachers": "default", "mistakes": str(tmp_path / "absent.jsonl"),
              "filter": "review"} | overrides
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
        # Without a committee run to measure, outputs are the defaults: 1 feedback + 1 rationale + 2 reviews, each
        # of which may also think for the whole thinking budget (gemini's).
        thinking = teacher.max_output_tokens() - teacher.max_tokens
        assert row["output_tokens"] == pytest.approx(1000 * (300 + 300 + 2 * 150 + 4 * thinking))
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
                                  filter="review", progress=False))
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
    # The default filter, the gold check: feedback and a rationale from each of 3 teachers, no reviews.
    assert code == 0 and result["total"]["requests"] == 60 and result["sample"] == 20
    code = main(["estimate", "--task", "gsm8k", "--teachers", "offline", "--mistakes", str(tmp_path / "absent.jsonl")])
    table = capsys.readouterr().out
    rows = round(len(get_task("gsm8k").load("train")) * 0.5)
    assert code == 0 and f"{rows:,} mistakes" in table and "careful" in table and "total" in table


def two_teachers(tmp_path, **gemini) -> str:
    """A committee file with cached-input and cache-write prices; `gemini` overrides the second teacher."""
    path = tmp_path / "teachers.yaml"
    second = {"name": "gemini", "provider": "gemini", "model": "gemini-2.5-flash", "price_input": 0.30,
              "price_output": 2.50, "price_cached_input": 0.075, "max_tokens": 512} | gemini
    path.write_bytes(orjson.dumps({"teachers": [
        {"name": "claude", "provider": "anthropic", "model": "claude-haiku-4-5", "price_input": 1.0,
         "price_output": 5.0, "price_cached_input": 0.10, "price_cache_write": 1.25},
        second,
    ]}))
    return str(path)


def test_cost_uses_the_cached_rates_a_committee_run_measured(tmp_path, data_dir, capsys):
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=5)
    stats = {"claude": {"successes": 20, "input_tokens": 10_000, "output_tokens": 6_000, "cached_input_tokens": 4_000,
                        "cache_write_tokens": 1_000},
             "gemini": {"successes": 20, "input_tokens": 10_000, "output_tokens": 6_000, "cached_input_tokens": 5_000}}
    (tmp_path / "committee_stats.json").write_bytes(orjson.dumps({"teachers": stats}))
    result = run(tmp_path, teachers=two_teachers(tmp_path), mistakes=str(mistakes), num_mistakes=1000)
    assert result["cached_input_source"] == "committee_stats"
    claude, gemini = result["teachers"]["claude"], result["teachers"]["gemini"]
    assert (claude["cached_input_share"], claude["cache_write_share"]) == (0.4, 0.1)
    tokens_in, tokens_out = claude["input_tokens"], claude["output_tokens"]
    assert claude["cost_usd"] == pytest.approx(
        (tokens_in * 0.5 * 1.0 + tokens_in * 0.4 * 0.10 + tokens_in * 0.1 * 1.25 + tokens_out * 5.0) / 1e6)
    tokens_in, tokens_out = gemini["input_tokens"], gemini["output_tokens"]
    assert gemini["cost_usd"] == pytest.approx((tokens_in * 0.5 * 0.30 + tokens_in * 0.5 * 0.075
                                                + tokens_out * 2.50) / 1e6)
    assert "claude 40% read, 10% written" in capsys.readouterr().out


def test_without_measured_cache_hits_none_are_assumed_and_said(tmp_path, data_dir, capsys):
    result = run(tmp_path, teachers=two_teachers(tmp_path), num_mistakes=1000)
    assert result["cached_input_source"] == "none assumed"
    for row, (price_in, price_out) in zip(result["teachers"].values(), ((1.0, 5.0), (0.30, 2.50)), strict=True):
        assert row["cached_input_share"] == row["cache_write_share"] == 0
        assert row["cost_usd"] == pytest.approx((row["input_tokens"] * price_in + row["output_tokens"] * price_out) / 1e6)
    assert "no cache hits assumed (none measured), so the cost is an upper bound" in capsys.readouterr().out


def test_a_thinking_budget_counts_as_possible_output(tmp_path, data_dir, capsys):
    plain = run(tmp_path, teachers=two_teachers(tmp_path), num_mistakes=100)
    thinking = run(tmp_path, teachers=two_teachers(tmp_path, thinking_budget=1024), num_mistakes=100)
    assert plain["output_tokens_per_request"]["gemini"] == {"feedback": 300, "rationale": 300, "review": 150}
    assert thinking["output_tokens_per_request"]["gemini"] == {"feedback": 1324, "rationale": 1324, "review": 1174}
    # One feedback, one rationale and one review per mistake, each of which may think its whole budget.
    extra = thinking["teachers"]["gemini"]["output_tokens"] - plain["teachers"]["gemini"]["output_tokens"]
    assert extra == 100 * 3 * 1024
    assert thinking["teachers"]["claude"] == plain["teachers"]["claude"]
    assert "plus each teacher's whole thinking_budget" in capsys.readouterr().out


def test_a_measured_mean_counts_the_batch_api_replies_too():
    """committee_stats.json counts a Batch API reply's tokens in output_tokens and the reply in `batched`, not in
    `successes`: the mean output per reply is over both, or a --batch-api run doubles the estimate."""
    from gen.committee.estimate import output_tokens

    teacher = load_committee("default")[0]
    measured = {"successes": 10, "batched": 10, "output_tokens": 20 * 200}
    assert set(output_tokens(teacher, measured).values()) == {200}
    assert set(output_tokens(teacher, {"successes": 0, "batched": 4, "output_tokens": 4 * 90}).values()) == {90}


def test_every_filter_is_priced_side_by_side_and_samples_multiply_rationales(tmp_path, data_dir, capsys):
    one = run(tmp_path, num_mistakes=100)
    assert {f: t["requests_per_mistake"] for f, t in one["filters"].items()} == \
        {"review": 12, "gold": 6, "gold+review": 12, "none": 6}  # gold+review: no gold rate measured, all pass
    assert one["filters"]["review"]["cost_usd"] == pytest.approx(one["total"]["cost_usd"])
    assert one["filters"]["gold"]["cost_usd"] < one["total"]["cost_usd"]
    four = run(tmp_path, num_mistakes=100, samples=4, filter="gold")
    # Each teacher: 1 feedback + 4 rationales; under review also 4 x 2 reviews of the others' rationales.
    assert four["requests_per_mistake"] == 15 and four["filters"]["review"]["requests_per_mistake"] == 3 * (5 + 8)
    assert four["total"]["requests"] == 1500
    assert "--filter gold, --samples 4: 15 requests per mistake" in capsys.readouterr().out


def test_gold_review_prices_the_reviews_of_the_measured_gold_passing_share(tmp_path, data_dir):
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=5)
    outcomes = {"gpt": {"written": 10, "gold": 5}, "gemini": {"written": 10, "gold": 10}, "claude": {"written": 4, "gold": 0}}
    (tmp_path / "committee_stats.json").write_bytes(orjson.dumps({"filter": "review", "teachers": {}, "outcomes": outcomes}))
    result = run(tmp_path, mistakes=str(mistakes), num_mistakes=10)
    assert result["gold_rate_source"] == "committee_stats"
    # Each rationale that passes is reviewed by 2 peers: 2 x (0.5 + 1 + 0) reviews a mistake, beside 6 drafts.
    assert result["filters"]["gold+review"]["requests_per_mistake"] == pytest.approx(6 + 2 * 1.5)
