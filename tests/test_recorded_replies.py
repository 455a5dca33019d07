"""Real provider replies (tests/fixtures/replies, with their provenance) replayed through the provider and the client.

Each recorded reply is served by an httpx.MockTransport, as often as it is asked for, to
  * make_provider(teacher, http).complete(request): the outcome class, text, billed tokens and cost, and
  * TeacherClient(teacher, ResponseCache, http).complete(request): how many times it is sent, with every wait
    made instant, and that a reply (refusals and truncations included) is cached like any other.
What each reply must become is typed once in tests/fixtures/replies/expected.yaml, from the providers' docs.
Names that issue 22 adds (Usage, QuotaExhausted, price_cached_input, ...) are looked up when a test runs, so that
before they exist a test fails on an assertion and the rest of the file still runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import httpx
import pytest
import yaml

from gen.teachers import client as client_module
from gen.teachers import providers
from gen.teachers.cache import ResponseCache
from gen.teachers.client import Retry, TeacherClient
from gen.teachers.config import Teacher
from gen.teachers.providers import ChatRequest, ChatResponse, make_provider

REPLIES = Path(__file__).parent / "fixtures" / "replies"
EXPECTED: dict[str, dict] = yaml.safe_load((REPLIES / "expected.yaml").read_text())
PRICES = {"price_input": 1.0, "price_output": 4.0, "price_cached_input": 0.25, "price_cache_write": 1.25}
MAX_RETRIES = 2
SENDS = {"ok": 1, "truncated": 1, "refused": 1, "fatal": 1, "quota": 1,
         "transient": MAX_RETRIES + 1, "rate_limited": 2 * MAX_RETRIES + 1}
REPLIED = ("ok", "truncated", "refused")  # a 200 the provider answered: returned, billed, cached
REQUEST = ChatRequest((("system", "Be brief."), ("user", "What is the capital of France?")), max_tokens=64)
NAMES = sorted(EXPECTED)


def test_every_fixture_has_one_expectation():
    files = sorted(f"{p.parent.name}/{p.stem}" for p in REPLIES.glob("*/*.json"))
    assert files == NAMES
    assert len(files) >= 45


def recorded(name: str) -> dict:
    return json.loads((REPLIES / f"{name}.json").read_text())


def teacher(name: str) -> Teacher:
    """A one-key teacher of the fixture's provider with the fixed prices (those the code knows yet)."""
    known = {f.name for f in dataclasses.fields(Teacher)}
    prices = {k: v for k, v in PRICES.items() if k in known}
    return Teacher(name="t1", provider=name.split("/")[0], model="m-1", api_key_env="FAIR_TEST_KEY",
                   rpm=1_000_000, tpm=1_000_000_000, max_retries=MAX_RETRIES, **prices)


def transport(name: str, sent: list) -> httpx.MockTransport:
    reply = recorded(name)

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(reply["status"], headers=reply["headers"], content=reply["body"].encode())

    return httpx.MockTransport(handle)


def expected_cost(e: dict) -> float:
    """INTERFACE.md: ((in - cached - write) * input + cached * cached_input + write * cache_write + out * output) / 1e6."""
    cached, write = e.get("cached_input", 0), e.get("cache_write", 0)
    return ((e.get("input", 0) - cached - write) * PRICES["price_input"] + cached * PRICES["price_cached_input"]
            + write * PRICES["price_cache_write"] + e.get("output", 0) * PRICES["price_output"]) / 1e6


@pytest.fixture(autouse=True)
def instant(monkeypatch):
    """A key to send, and no real waiting: retries and cool-downs (a 429's 58 s included) take no time."""
    monkeypatch.setenv("FAIR_TEST_KEY", "sk-test-recorded-000")
    monkeypatch.setattr(Retry, "wait", lambda *args, **kwargs: 0.0)
    monkeypatch.setattr(client_module, "MAX_COOLDOWN_S", 0.0, raising=False)


def provider_call(name: str):
    """One make_provider(...).complete(); returns (the response or the exception, requests sent)."""
    sent: list = []

    async def go():
        async with httpx.AsyncClient(transport=transport(name, sent)) as http:
            try:
                return await make_provider(teacher(name), http).complete(REQUEST)
            except Exception as e:  # noqa: BLE001 - returned for the test to inspect
                return e

    return asyncio.run(go()), sent


def outcome_of(result) -> str:
    """The INTERFACE.md class of what the provider returned or raised."""
    if isinstance(result, ChatResponse):
        if getattr(result, "refusal", None):
            return "refused"
        return "truncated" if getattr(result, "truncated", False) else "ok"
    quota = getattr(providers, "QuotaExhausted", None)
    if quota is not None and isinstance(result, quota):
        return "quota"
    for cls, label in ((providers.RateLimited, "rate_limited"), (providers.TransientError, "transient"),
                       (providers.FatalError, "fatal")):
        if isinstance(result, cls):
            return label
    return f"unexpected {type(result).__name__}: {result}"


@pytest.mark.parametrize("name", NAMES)
def test_outcome(name):
    e = EXPECTED[name]
    result, sent = provider_call(name)
    assert len(sent) == 1
    assert outcome_of(result) == e["outcome"], result
    if e["outcome"] in REPLIED:
        assert result.text.startswith(e["text"]) and (e["text"] or result.text == "")
        assert getattr(result, "refusal", None) == e.get("refusal")
    if "retry_after" in e:
        assert result.retry_after == pytest.approx(e["retry_after"])


@pytest.mark.parametrize("name", [n for n in NAMES if EXPECTED[n]["outcome"] in REPLIED])
def test_billed_input_and_output_tokens(name):
    e = EXPECTED[name]
    result, _ = provider_call(name)
    assert isinstance(result, ChatResponse), result
    assert (result.input_tokens, result.output_tokens) == (e.get("input", 0), e.get("output", 0))


@pytest.mark.parametrize("name", [n for n in NAMES if EXPECTED[n]["outcome"] in REPLIED])
def test_cached_tokens_and_cost(name):
    e = EXPECTED[name]
    result, _ = provider_call(name)
    assert isinstance(result, ChatResponse), result
    assert getattr(result, "cached_input_tokens", None) == e.get("cached_input", 0)
    assert getattr(result, "cache_write_tokens", None) == e.get("cache_write", 0)
    usage = getattr(result, "usage", None)
    assert usage is not None, "ChatResponse has no .usage (issue 22)"
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (
        e.get("input", 0), e.get("output", 0), e.get("cached_input", 0), e.get("cache_write", 0))
    assert teacher(name).cost(usage) == pytest.approx(expected_cost(e), abs=1e-12)


def client_calls(name: str, tmp_path: Path):
    """TeacherClient.complete() twice (a failure stops it); returns (client, results, requests sent)."""
    sent: list = []

    async def go():
        async with httpx.AsyncClient(transport=transport(name, sent)) as http:
            with ResponseCache(tmp_path / "cache.sqlite") as cache:
                client = TeacherClient(teacher(name), cache, http, backoff_s=0.0, backoff_max_s=0.0)
                results = []
                for _ in range(2):
                    try:
                        results.append(await client.complete(REQUEST))
                    except Exception as err:  # noqa: BLE001 - returned for the test to inspect
                        results.append(err)
                        break
                return client, results

    client, results = asyncio.run(go())
    return client, results, sent


@pytest.mark.parametrize("name", NAMES)
def test_sends_through_the_client(name, tmp_path):
    """Sent exactly as often as its class allows; a reply is cached (a second call sends nothing); a quota
    exhaustion comes out as QuotaExhausted itself, everything else that fails as TeacherFailed."""
    e = EXPECTED[name]
    client, results, sent = client_calls(name, tmp_path)
    assert len(sent) == SENDS[e["outcome"]], results[0]
    if e["outcome"] in REPLIED:
        first, again = results
        assert isinstance(first, ChatResponse) and again == first  # the second came from the cache
        assert client.stats.cache_hits == 1
    elif e["outcome"] == "quota":
        assert type(results[0]).__name__ == "QuotaExhausted", results[0]
    else:
        assert isinstance(results[0], client_module.TeacherFailed), results[0]


@pytest.mark.parametrize("name", [n for n in NAMES if EXPECTED[n]["outcome"] in REPLIED])
def test_client_counts_billed_usage_refusals_and_truncations(name, tmp_path):
    e = EXPECTED[name]
    client, _, _ = client_calls(name, tmp_path)
    stats = client.stats
    assert (stats.input_tokens, stats.output_tokens) == (e.get("input", 0), e.get("output", 0))
    assert getattr(stats, "cached_input_tokens", None) == e.get("cached_input", 0)
    assert getattr(stats, "cache_write_tokens", None) == e.get("cache_write", 0)
    for counter in ("refused", "truncated"):
        assert getattr(stats, counter, None) == (e["outcome"] == counter), counter
    assert stats.cost == pytest.approx(expected_cost(e), abs=1e-12)
