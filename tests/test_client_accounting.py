"""TeacherClient accounting: billed usage on every attempt, refusals and truncations as cached replies, cached
input at its own price, and an account out of quota stopping after one send."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from gen.teachers.cache import ResponseCache, key_for
from gen.teachers.client import TeacherFailed, estimate_tokens
from gen.teachers.providers import ChatResponse, QuotaExhausted, TransientError, Usage
from tests.test_client import Script, request, run, teacher


def billed(error: Exception, usage: Usage) -> Exception:
    error.usage = usage
    return error


def test_failed_attempts_count_their_billed_usage(tmp_path):
    script = Script(billed(TransientError("t: empty reply"), Usage(100, 40)), ChatResponse("4", 100, 10))
    client, response = run(lambda c: c.complete(request()), tmp_path, teacher(), script)
    s = client.stats
    assert response.text == "4" and (s.requests, s.successes, s.retries) == (2, 1, 1)
    assert (s.input_tokens, s.output_tokens) == (200, 50)
    assert s.cost == pytest.approx((200 * 1.0 + 50 * 2.0) / 1e6)


def test_usage_of_a_request_that_fails_for_good_is_counted_too(tmp_path):
    script = Script(billed(TransientError("t: empty reply"), Usage(100, 40)))

    async def go(client):
        with pytest.raises(TeacherFailed) as failed:
            await client.complete(request())
        return failed.value

    client, failed = run(go, tmp_path, teacher(max_retries=2), script)
    assert len(script.calls) == 3 and (client.stats.input_tokens, client.stats.output_tokens) == (300, 120)
    # The committee's record of the failed request (gen/committee/mistake.py's ask) counts what it was billed.
    assert failed.usage == Usage(300, 120)


@pytest.mark.parametrize("reply", [
    ChatResponse("", 50, 0, refusal="SAFETY"),
    ChatResponse("The answer is", 50, 16, truncated=True),
    ChatResponse("", 50, 1040, truncated=True),
])
def test_refusals_and_truncations_are_sent_once_returned_and_cached(tmp_path, reply):
    script = Script(reply)
    t = teacher()

    async def go(client):
        first = await client.complete(request())
        again = await client.complete(request())  # from the cache: never re-sent
        return first, again

    client, (first, again) = run(go, tmp_path, t, script)
    assert first == again == reply and len(script.calls) == 1
    s = client.stats
    assert (s.successes, s.refused, s.truncated, s.cache_hits, s.retries) == (
        1, reply.refusal is not None, reply.truncated, 1, 0)
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        assert cache.get(key_for(t, request())) == reply


def test_cached_input_and_cache_writes_are_priced_at_their_rates(tmp_path):
    t = teacher(price_cached_input=0.1, price_cache_write=1.25)
    script = Script(ChatResponse("4", 10_000, 100, cached_input_tokens=6_000, cache_write_tokens=3_000))
    client, _ = run(lambda c: c.complete(request()), tmp_path, t, script)
    s = client.stats
    assert (s.input_tokens, s.cached_input_tokens, s.cache_write_tokens) == (10_000, 6_000, 3_000)
    assert s.cost == pytest.approx((1_000 * 1.0 + 6_000 * 0.1 + 3_000 * 1.25 + 100 * 2.0) / 1e6)


def test_quota_exhausted_is_raised_as_is_after_one_send_and_the_key_sends_no_more(tmp_path):
    script = Script(QuotaExhausted("t: HTTP 429: You exceeded your current quota"), ChatResponse("4", 1, 1))

    async def go(client):
        with pytest.raises(QuotaExhausted, match="exceeded your current quota"):
            await client.complete(request(0))
        with pytest.raises(QuotaExhausted):  # another request on the same key: not sent
            await client.complete(request(1))
        return client.cache.inflight()

    client, inflight = run(go, tmp_path, teacher(), script)
    assert len(script.calls) == 1 and inflight == 0
    assert (client.stats.requests, client.stats.failures, client.stats.retries) == (1, 2, 0)


def test_a_real_insufficient_quota_reply_is_sent_once(tmp_path):
    body = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                      "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
    sent = []

    def handler(req):
        sent.append(req)
        return httpx.Response(429, json=body, headers={"retry-after": "1"})

    async def go(client):
        with pytest.raises(QuotaExhausted):
            await client.complete(request())

    client, _ = run(go, tmp_path, teacher(max_retries=8), handler=handler)
    assert len(sent) == 1 and client.stats.rate_limited == 0


def test_a_refused_reply_through_the_real_provider_is_billed(tmp_path):
    body = {"choices": [{"message": {"content": None, "refusal": "I can't help with that."},
                         "finish_reason": "stop"}], "usage": {"prompt_tokens": 30, "completion_tokens": 9}}
    client, response = run(lambda c: c.complete(request()), tmp_path, teacher(),
                           handler=lambda req: httpx.Response(200, json=body))
    assert (response.text, response.refusal) == ("", "refusal")
    assert (client.stats.refused, client.stats.input_tokens, client.stats.output_tokens) == (1, 30, 9)


def test_the_estimate_counts_a_thinking_budget():
    gemini = teacher(provider="gemini", thinking_budget=1024)
    req = request(max_tokens=100)
    assert estimate_tokens(req, gemini) == estimate_tokens(req) + 1024
    assert estimate_tokens(req, dataclasses.replace(gemini, thinking_budget=None)) == estimate_tokens(req)


def test_with_several_keys_a_key_out_of_quota_leaves_the_work_to_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIR_KEY_A", "key-a")
    monkeypatch.setenv("FAIR_KEY_B", "key-b")
    quota = {"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}}
    ok = {"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": 10, "completion_tokens": 2}}
    sent = []

    def handler(req):
        sent.append(req.headers["authorization"])
        return httpx.Response(429, json=quota) if req.headers["authorization"].endswith("a") else \
            httpx.Response(200, json=ok)

    async def go(client):
        outcomes = []
        for i in range(3):
            try:
                outcomes.append((await client.complete(request(i))).text)
            except QuotaExhausted:
                outcomes.append("quota")
        return outcomes

    _, outcomes = run(go, tmp_path, teacher(api_key_env=("FAIR_KEY_A", "FAIR_KEY_B")), handler=handler)
    assert sent.count("Bearer key-a") == 1  # once out of quota, key A sends no more
    assert outcomes == ["quota", "4", "4"]  # the first request went to key A (ties go to the first key)
