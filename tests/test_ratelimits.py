"""Rate-limit headers: Azure's "no information" values, Anthropic's separate input and output budgets, and the
client's cool-downs from them."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from gen.teachers.gates import gate_for
from gen.teachers.providers import ChatResponse
from gen.teachers.ratelimits import RateLimitInfo, parse_limits, retry_after
from tests.test_client import Script, request, run, teacher

NOW = time.time()


def stamp(seconds: float) -> str:
    return (datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("headers", [
    {"x-ratelimit-remaining-tokens": "-1", "x-ratelimit-reset-tokens": "0"},  # Azure: no token limit reported
    {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "0s"},
    {"x-ratelimit-remaining-requests": "-5", "x-ratelimit-reset-requests": "-2"},
    {"x-ratelimit-remaining-requests": "inf", "x-ratelimit-reset-requests": "nan"},
])
def test_negative_counts_and_zero_resets_are_no_information(headers):
    limits = parse_limits(httpx.Headers(headers), NOW)
    assert all(n is None or n >= 0 for n, _ in limits.budgets())
    assert all(r is None for _, r in limits.budgets())
    assert retry_after(httpx.Headers(headers), None, NOW) is None  # never "retry after 0 s"


def test_azure_headers_keep_what_they_do_say():
    limits = parse_limits(httpx.Headers({"x-ratelimit-remaining-tokens": "-1", "x-ratelimit-reset-tokens": "0",
                                         "x-ratelimit-remaining-requests": "99", "x-ratelimit-reset-requests": "1s"}))
    assert (limits.remaining_tokens, limits.reset_tokens_s) == (None, None)
    assert (limits.remaining_requests, limits.reset_requests_s) == (99, 1.0)


def test_anthropic_input_and_output_budgets_are_read_apart():
    headers = httpx.Headers({
        "anthropic-ratelimit-requests-remaining": "49", "anthropic-ratelimit-requests-reset": stamp(1),
        "anthropic-ratelimit-input-tokens-remaining": "0", "anthropic-ratelimit-input-tokens-reset": stamp(20),
        "anthropic-ratelimit-output-tokens-remaining": "7000", "anthropic-ratelimit-output-tokens-reset": stamp(3),
        "anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": stamp(20),
    })
    limits = parse_limits(headers, NOW)
    assert (limits.remaining_input_tokens, limits.remaining_output_tokens) == (0, 7000)
    assert limits.reset_input_tokens_s == pytest.approx(20, abs=0.01)
    assert limits.reset_output_tokens_s == pytest.approx(3, abs=0.01)
    assert retry_after(headers, None, NOW) == pytest.approx(20, abs=0.01)  # the exhausted budget's reset
    only_input = httpx.Headers({"anthropic-ratelimit-input-tokens-remaining": "10",
                                "anthropic-ratelimit-input-tokens-reset": stamp(-5)})  # a reset already past
    assert parse_limits(only_input, NOW) == RateLimitInfo(remaining_input_tokens=10)


@pytest.mark.parametrize(("limits", "cools"), [
    (RateLimitInfo(remaining_input_tokens=5, reset_input_tokens_s=0.15), True),  # below the prompt estimate
    (RateLimitInfo(remaining_output_tokens=10, reset_output_tokens_s=0.15), True),  # below max output (16)
    (RateLimitInfo(remaining_input_tokens=10**6, reset_input_tokens_s=0.15,
                   remaining_output_tokens=10**6, reset_output_tokens_s=0.15), False),
    (RateLimitInfo(remaining_requests=0, reset_requests_s=None), False),  # exhausted, no reset: no information
])
def test_the_client_cools_down_on_an_exhausted_input_or_output_budget(tmp_path, limits, cools):
    script = Script(ChatResponse("a", 1, 1, limits))

    async def go(client):
        await client.complete(request(0))
        return gate_for(client.teacher).cooldown_until > asyncio.get_running_loop().time()

    _, cooling = run(go, tmp_path, teacher(), script)
    assert cooling is cools
