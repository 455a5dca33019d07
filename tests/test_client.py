"""TeacherClient: retries, 429 cool-downs shared by a teacher, fatal errors, cache hits, limiters, accounting."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gen.teachers.cache import ResponseCache, key_for
from gen.teachers.client import TeacherClient, TeacherFailed, estimate_tokens
from gen.teachers.config import Teacher
from gen.teachers.gates import gate_for
from gen.teachers.providers import (
    ChatRequest,
    ChatResponse,
    FatalError,
    RateLimited,
    RateLimitInfo,
    TransientError,
)

OK = {"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": 1000, "completion_tokens": 500}}


def teacher(**kw) -> Teacher:
    defaults = dict(name="t", provider="openai", model="m", base_url="http://test/v1", rpm=60_000,
                    tpm=10_000_000, max_retries=3, price_input=1.0, price_output=2.0)
    return Teacher(**(defaults | kw))


def request(i: int = 0, max_tokens: int = 16) -> ChatRequest:
    return ChatRequest((("system", "s"), ("user", f"q{i}")), max_tokens=max_tokens)


class Script:
    """A provider that plays back outcomes in order (the last one repeats) and notes when it was called."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls: list[float] = []

    async def complete(self, req: ChatRequest) -> ChatResponse:
        self.calls.append(asyncio.get_running_loop().time())
        out = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(out, Exception):
            raise out
        return out


def run(coro_fn, tmp_path, t: Teacher, provider=None, handler=None):
    """Build a client (scripted provider, or the real one over a mock transport) and run coro_fn(client)."""
    async def go():
        transport = httpx.MockTransport(handler or (lambda req: httpx.Response(500)))
        async with httpx.AsyncClient(transport=transport) as http:
            with ResponseCache(tmp_path / "cache.sqlite") as cache:
                client = TeacherClient(t, cache, http, provider, backoff_s=0.001, backoff_max_s=0.01)
                return client, await coro_fn(client)

    return asyncio.run(go())


def test_retries_5xx_timeout_and_malformed_replies_then_succeeds(tmp_path):
    replies = iter([
        lambda req: httpx.Response(503, json={"error": {"message": "overloaded"}}),
        lambda req: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=req)),
        lambda req: httpx.Response(200, content=b"{not json"),
        lambda req: httpx.Response(200, json={"choices": []}),
        lambda req: httpx.Response(200, json=OK),
    ])
    t = teacher(max_retries=4)
    client, response = run(lambda c: c.complete(request()), tmp_path, t, handler=lambda req: next(replies)(req))
    assert response.text == "4"
    s = client.stats
    assert (s.requests, s.retries, s.successes, s.failures, s.rate_limited) == (5, 4, 1, 0, 0)
    assert (s.input_tokens, s.output_tokens) == (1000, 500)
    assert s.cost == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    with ResponseCache(tmp_path / "cache.sqlite") as cache:  # stored on arrival, nothing left in flight
        assert cache.get(key_for(t, request())).text == "4" and cache.abandoned_inflight() == 0


def test_fatal_error_fails_fast_without_retry(tmp_path):
    script = Script(FatalError("t: HTTP 401: bad key"))

    async def go(client):
        with pytest.raises(TeacherFailed, match="fatal: t: HTTP 401") as info:
            await client.complete(request())
        assert info.value.teacher == "t"
        return client.cache.inflight()

    client, inflight = run(go, tmp_path, teacher(), script)
    assert len(script.calls) == 1 and inflight == 0
    assert (client.stats.failures, client.stats.retries, client.stats.successes) == (1, 0, 0)


def test_retries_exhausted_raises_teacher_failed(tmp_path):
    script = Script(TransientError("t: HTTP 503: down"))

    async def go(client):
        with pytest.raises(TeacherFailed, match="gave up after 3 attempts"):
            await client.complete(request())

    client, _ = run(go, tmp_path, teacher(max_retries=2), script)
    assert len(script.calls) == 3 and client.stats.retries == 2 and client.stats.failures == 1


def test_429s_have_their_own_budget(tmp_path):
    """Twice max_retries for 429s, max_retries for the rest, counted apart."""
    script = Script(*[RateLimited("t: HTTP 429", retry_after=0.0)] * 3, TransientError("t: 503"),
                    RateLimited("t: HTTP 429", retry_after=0.0))

    async def go(client):
        with pytest.raises(TeacherFailed, match="HTTP 429"):
            await client.complete(request())

    client, _ = run(go, tmp_path, teacher(max_retries=2), script)
    assert len(script.calls) == 6  # 429 x3, 503 (1 of 2 other retries), 429 x2 more: the 5th 429 stops it
    assert client.stats.rate_limited == 5


def test_429_retry_after_is_honoured_and_the_whole_teacher_cools_down(tmp_path):
    script = Script(RateLimited("t: HTTP 429", retry_after=0.2), ChatResponse("ok", 1, 1))

    async def go(client):
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(client.complete(request(0)))
        await asyncio.sleep(0.02)  # the first request has had its 429 by now
        assert gate_for(client.teacher).slow_until > loop.time()  # and the request rate is halved for a while
        other = TeacherClient(client.teacher, client.cache, httpx.AsyncClient(), script)  # same key + model
        await asyncio.gather(first, other.complete(request(1)))

    client, _ = run(go, tmp_path, teacher(), script)
    first_429, *later = script.calls
    assert len(later) == 2 and min(later) - first_429 >= 0.19  # neither sent before Retry-After ran out
    assert client.stats.rate_limited == 1 and client.stats.retries == 1


def test_real_429_over_http_with_retry_after_ms(tmp_path):
    replies = iter([httpx.Response(429, headers={"retry-after-ms": "150"}, json={"error": {"message": "slow"}}),
                    httpx.Response(200, json=OK)])

    async def go(client):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await client.complete(request())
        return loop.time() - t0

    client, elapsed = run(go, tmp_path, teacher(), handler=lambda req: next(replies))
    assert elapsed >= 0.14 and client.stats.requests == 2 and client.stats.successes == 1


def test_exhausted_rate_limit_headers_cool_the_teacher_down(tmp_path):
    limits = RateLimitInfo(remaining_requests=0, remaining_tokens=10**6, reset_requests_s=0.15)
    script = Script(ChatResponse("a", 1, 1, limits), ChatResponse("b", 1, 1))

    async def go(client):
        await client.complete(request(0))
        await client.complete(request(1))

    run(go, tmp_path, teacher(), script)
    assert script.calls[1] - script.calls[0] >= 0.14


def test_cache_hit_makes_no_call(tmp_path):
    script = Script(ChatResponse("4", 10, 2))

    async def go(client):
        first = await client.complete(request())
        again = await client.complete(request())
        return first, again

    client, (first, again) = run(go, tmp_path, teacher(), script)
    assert first.text == again.text == "4" and len(script.calls) == 1
    s = client.stats
    assert (s.requests, s.cache_hits, s.successes, s.input_tokens, s.output_tokens) == (1, 1, 1, 10, 2)


def test_rpm_limiter_spaces_requests(tmp_path):
    """rpm 1200: a bucket of 20 (one second's worth) refilled at 20/s, so 30 requests need at least 0.5 s."""
    script = Script(ChatResponse("ok", 1, 1))

    async def go(client):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*(client.complete(request(i)) for i in range(30)))
        return loop.time() - t0

    client, elapsed = run(go, tmp_path, teacher(rpm=1200, max_concurrency=64), script)
    assert len(script.calls) == 30 and elapsed >= 0.45 and client.stats.wait_s > 0
    calls = sorted(script.calls)
    assert calls[29] - calls[20] >= 0.4  # the last ten each waited for a refill, 50 ms apart


def test_concurrency_is_capped(tmp_path):
    in_flight = peak = 0

    class Slow:
        async def complete(self, req):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            return ChatResponse("ok", 1, 1)

    run(lambda c: asyncio.gather(*(c.complete(request(i)) for i in range(12))), tmp_path,
        teacher(max_concurrency=3), Slow())
    assert peak == 3


def test_token_reservations_settle_with_real_usage(tmp_path):
    """Reserve prompt/4 + max_tokens before; credit the surplus to the next reservation after."""
    req = request(0, max_tokens=1000)
    estimate = estimate_tokens(req)
    script = Script(ChatResponse("ok", 30, 20))

    async def go(client):
        gate = gate_for(client.teacher)
        charged = []
        acquire = gate.tokens.acquire
        gate.tokens.acquire = lambda amount: charged.append(amount) or acquire(amount)
        await client.complete(req)
        after_first = gate.token_balance
        await client.complete(request(1, max_tokens=1000))
        return charged, after_first, gate.token_balance

    _, (charged, after_first, after_second) = run(go, tmp_path, teacher(tpm=60_000), script)
    assert after_first == estimate - 50  # reserved `estimate`, used 50: the rest is credit
    assert charged == [estimate, 50]  # so the second call was charged only what the first really used
    assert after_second == after_first


def test_estimate_larger_than_the_bucket_is_capped(tmp_path):
    script = Script(ChatResponse("ok", 10, 10))
    _, response = run(lambda c: c.complete(request(0, max_tokens=5000)), tmp_path, teacher(tpm=1000), script)
    assert response.text == "ok"  # no ValueError from aiolimiter, no minute-long wait


def test_usage_above_the_estimate_is_charged_to_the_next_reservation(tmp_path):
    script = Script(ChatResponse("ok", 3000, 1000))

    async def go(client):
        gate = gate_for(client.teacher)
        charged = []
        acquire = gate.tokens.acquire
        gate.tokens.acquire = lambda amount: charged.append(amount) or acquire(amount)
        await client.complete(request(0, max_tokens=100))
        await client.complete(request(1, max_tokens=100))
        return charged

    charged = run(go, tmp_path, teacher(tpm=60_000), script)[1]
    estimate = estimate_tokens(request(0, max_tokens=100))
    assert charged == [estimate, estimate + (4000 - estimate)]  # its own estimate plus the first call's debt


def test_never_more_than_rpm_in_any_window(tmp_path, monkeypatch):
    """The per-second bucket alone would let rpm + one second's worth into the first minute (a 429 at second 59
    from a sliding-window provider); the gate's send log caps every window at rpm."""
    import gen.teachers.client as client_module

    monkeypatch.setattr(client_module, "WINDOW_S", 0.4)  # a "minute" of 0.4 s keeps the test short
    t = teacher(rpm=600)  # the bucket allows 10 at once: far more than the window below
    gate_rpm = 3

    async def go(client):
        gate = gate_for(t)
        gate.rpm = gate_rpm
        loop = asyncio.get_running_loop()
        times = []
        for _ in range(7):
            await client._place(gate)
            times.append(loop.time())
        return times

    _, times = run(go, tmp_path, t)
    assert len(times) == 7
    for i in range(len(times) - gate_rpm):
        assert times[i + gate_rpm] - times[i] >= 0.4 - 1e-3  # any 4 sends span a whole window
