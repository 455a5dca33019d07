"""TeacherClient: the one wrapper around every provider call: cache, rate limits, retries, accounting.

    cache = ResponseCache(out_dir / "responses.sqlite")
    async with http_client(teacher.max_concurrency) as http:       # gen/teachers/providers.py: httpx over aiohttp
        client = TeacherClient(teacher, cache, http)
        response = await client.complete(ChatRequest.for_teacher(teacher, messages))   # or TeacherFailed

Per request: a cache hit returns at once (no network). Otherwise each attempt takes a concurrency slot, waits
for the request and token buckets, waits out any cool-down, records the request as in flight (committed
before it is sent), sends it, and hands the reply to the cache the moment it arrives. Failures are retried
with exponential backoff and jitter; 429s have their own budget (2 x max_retries) so that a burst of them
cannot use up the retries meant for 5xx and timeouts (curator #205), and the rest get max_retries.
FatalError (other 4xx) is never retried. That is `Retry` (gen/teachers/retry.py), the one retry policy for every
call to a teacher's API: the Batch API's calls (gen/teachers/batch.py) go through it too. Refusals and truncated
replies are the provider's answer, not failures: returned, cached and never re-sent (the caller decides what a
cut-off reply is worth).

Limits are shared by every client for the same provider, base_url, API key and model (one "gate"), because
that is the unit the provider limits. A teacher with several API keys has one gate per key, each with the
teacher's rpm, tpm and max_concurrency; every attempt goes to the key that can send soonest: the one with the
fewest requests waiting or in flight, among keys not cooling down after a 429 (if all are, the one whose
cool-down ends first). A retry picks again, so a 429 moves the work to the other keys. Every client of one
event loop shares the gates, so the jobs of a `fair serve` process share one budget; its `Admission`
(serve/budget.py) decides whose request takes a gate's next slot, where a lone run takes first come. Per gate:
  * requests: a token bucket refilled at rpm/60 per second that holds one second's worth (or one request
    when rpm < 60): providers enforce per-minute limits at sub-minute granularity, so a full minute's
    burst at start-up would earn 429s. The bucket alone lets one second's worth more than rpm into the first
    minute, which a provider's sliding window answers with a 429 at second 59; so the gate also keeps the
    send times of the last minute (plus a margin for network jitter) and never sends more than rpm in it.
  * tokens: a one-minute bucket of tpm. Before a call we reserve an estimate: prompt chars / 4 (+4 per
    message) + max_tokens (+ a Gemini teacher's thinking budget: Teacher.max_output_tokens). Counting max_tokens is what OpenAI's own limiter does at request time, so the
    estimate is never below what the provider charges and concurrent calls cannot overshoot TPM (litellm
    #5783). After the reply we settle with the real usage: aiolimiter cannot refund, so the gate keeps a
    signed token balance; surplus (estimate > actual) is credited to the next reservations, a shortfall is
    charged to them. Failed attempts give their whole estimate back.
  * 429: the gate cools down until now + retry_after (or one backoff step when the provider gave none),
    and every request for that gate waits it out before sending (not curator's fixed 10 s for everyone);
    for the next SLOW_S seconds the gate's per-minute cap is SLOW_FACTOR of rpm: gentle, since one 429 is
    more often a collision at a window's edge than a wrong limit.
  * x-ratelimit-* / anthropic-ratelimit-* headers on every reply: when requests remaining is 0, tokens
    remaining are below this request's estimate, or Anthropic's input (output) tokens remaining are below its
    prompt estimate (its max output), the gate cools down until the reported reset (gen/teachers/ratelimits.py:
    a negative count or a zero reset is no information, so it never cools down for 0 s in a loop).
  * out of quota (QuotaExhausted: billing or a daily quota, gen/teachers/providers.py): sent once, never retried,
    raised to the caller as is (not as TeacherFailed), which stops the run. The gate then sends nothing for
    QUOTA_HOLD_S: requests waiting for it fail the same way without being sent (a teacher with several keys uses
    its other keys first); requests already in flight finish as they will, their replies cached. After the hold
    (a long-lived `fair serve` process) the next request tries the key again, once.

Accounting (TeacherStats): every attempt's billed usage counts, failed ones included (an empty or malformed 200
reply is billed: its ProviderError carries the usage), cost at the teacher's prices for plain, cached and
cache-write input (Teacher.cost). Sends per request: a reply (answer, refusal or truncation), a fatal error or a
quota error: 1; transient failures: up to max_retries + 1; 429s: up to 2 * max_retries + 1 (plus the others).

Cost: once the gate admits an attempt, it reserves its worst case from the run's budget (gen/teachers/budget.py)
and settles it with the attempt's billed cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from gen.teachers.budget import BudgetExhausted, CostBudget, worst_case_usd
from gen.teachers.cache import key_for
from gen.teachers.gates import WINDOW_S, Admission, Gate, gate_for
from gen.teachers.keys import redact
from gen.teachers.providers import (
    ChatProvider,
    ChatRequest,
    ChatResponse,
    FatalError,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    RateLimitInfo,
    Usage,
    make_provider,
)
from gen.teachers.retry import MAX_COOLDOWN_S, Retry

if TYPE_CHECKING:
    from gen.teachers.cache import ResponseCache
    from gen.teachers.config import Teacher

log = logging.getLogger("gen.teachers.client")

SLOW_S = 60.0  # after a 429, run this gate at SLOW_FACTOR of its request rate for this long
SLOW_FACTOR = 0.9
QUOTA_HOLD_S = 300.0  # after a QuotaExhausted, a gate sends nothing for this long


class TeacherFailed(ProviderError):
    """A request failed for good (fatal error, or retries exhausted); the caller records the failure."""

    def __init__(self, teacher: str, reason: str):
        super().__init__(f"teacher {teacher!r} failed: {reason}")
        self.teacher = teacher
        self.reason = reason


@dataclass
class TeacherStats:
    teacher: str
    requests: int = 0  # HTTP attempts sent, retries included
    cache_hits: int = 0
    batched: int = 0  # replies from the Batch API this run (gen/teachers/batch.py): tokens and cost below, at batch price
    successes: int = 0  # replies received from the provider, refusals and truncations included (not cache hits)
    refused: int = 0  # of successes: the provider declined to answer (ChatResponse.refusal)
    truncated: int = 0  # of successes: cut off at the output limit
    failures: int = 0  # requests that raised TeacherFailed or QuotaExhausted
    retries: int = 0
    rate_limited: int = 0  # 429 replies
    # Billed by the provider this run, on every attempt (failed ones too); cache hits cost nothing this run.
    input_tokens: int = 0  # every prompt token, cached reads and writes included
    output_tokens: int = 0  # thinking and reasoning tokens included
    cached_input_tokens: int = 0  # of input_tokens: prompt-cache reads
    cache_write_tokens: int = 0  # of input_tokens: prompt-cache writes (Anthropic)
    cost: float = 0.0  # USD, from the teacher's prices
    wait_s: float = 0.0  # summed time attempts spent waiting for the limiters and cool-downs
    elapsed_s: float = 0.0  # wall time from the first complete() call to the latest one's end

    def bill(self, usage: Usage, cost: float) -> None:
        """Count one attempt's billed usage (a reply's, or a failed but billed reply's) and its cost."""
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cached_input_tokens += usage.cached_input_tokens
        self.cache_write_tokens += usage.cache_write_tokens
        self.cost += cost

    def replied(self, response: ChatResponse) -> None:
        """Count a reply from the provider: answer, refusal or truncation."""
        self.successes += 1
        self.refused += response.refusal is not None
        self.truncated += response.truncated


def estimate_input_tokens(request: ChatRequest) -> int:
    """A request's prompt tokens, before we know: ~4 characters per token, +4 per message."""
    return sum(len(content) for _, content in request.messages) // 4 + 4 * len(request.messages)


def estimate_tokens(request: ChatRequest, teacher: Teacher | None = None) -> int:
    """What a call may cost against TPM, before we know: its prompt plus all the output it may bill (max_tokens,
    and a Gemini teacher's thinking budget: Teacher.max_output_tokens)."""
    output = teacher.max_output_tokens(request.max_tokens) if teacher is not None else request.max_tokens
    return estimate_input_tokens(request) + output


# ---------------------------------------------------------------------------------------------------------
# The client


@dataclass
class _Call:
    """One request's state across its attempts."""

    key: str
    request: ChatRequest
    estimate: int  # input_estimate + output_limit: what the gate reserves
    input_estimate: int
    output_limit: int  # the most output tokens the reply can bill
    begun: bool = False
    attempts: int = 0
    billed: Usage | None = None  # what its failed attempts were billed (empty or malformed 200s), if anything

    def bill(self, usage: Usage | None) -> None:
        if usage is not None:
            b = self.billed or Usage()
            self.billed = Usage(b.input_tokens + usage.input_tokens, b.output_tokens + usage.output_tokens,
                                b.cached_input_tokens + usage.cached_input_tokens,
                                b.cache_write_tokens + usage.cache_write_tokens)


class TeacherClient:
    def __init__(self, teacher: Teacher, cache: ResponseCache, http: httpx.AsyncClient,
                 provider: ChatProvider | None = None, *, backoff_s: float | None = None, backoff_max_s: float = 60.0,
                 admission: Admission | None = None, budget: CostBudget | None = None):
        self.teacher = teacher
        self.admission = admission
        self.budget = budget or CostBudget(None)  # without a run's budget: an uncapped one that only counts
        self.cache = cache
        # One provider per API key, each seeing a one-key teacher; a given `provider` (tests) serves all keys.
        self.keys = [(view, provider or make_provider(view, http)) for view in teacher.per_key()]
        self.retry = Retry(teacher.max_retries, teacher.retry_backoff_s if backoff_s is None else backoff_s,
                           backoff_max_s, honour_retry_after=len(self.keys) == 1)
        self.stats = TeacherStats(teacher.name)
        self._started: float | None = None

    def __repr__(self) -> str:
        return f"TeacherClient({self.teacher.name!r}, {self.teacher.provider}:{self.teacher.model})"

    async def complete(self, request: ChatRequest) -> ChatResponse:
        loop = asyncio.get_running_loop()
        if self._started is None:
            self._started = loop.time()
        try:
            key = key_for(self.teacher, request)
            if (cached := self.cache.get(key)) is not None:
                self.stats.cache_hits += 1
                return cached
            inputs, outputs = estimate_input_tokens(request), self.teacher.max_output_tokens(request.max_tokens)
            return await self._send(_Call(key, request, inputs + outputs, inputs, outputs))
        finally:
            self.stats.elapsed_s = loop.time() - self._started

    async def _send(self, call: _Call) -> ChatResponse:
        try:
            return await self.retry.run(lambda: self._attempt(call), self._on_retry)
        except ProviderError as e:
            # Not sent again this run; a killed run leaves its in-flight rows, counted at the next start.
            self.cache.finish(call.key)
            self.stats.failures += 1
            if isinstance(e, QuotaExhausted):  # the run stops: the caller says so, once
                log.warning("%s: out of quota", e)
                raise
            why = "fatal" if isinstance(e, FatalError) else f"gave up after {call.attempts} attempts"
            reason = redact(f"{why}: {e}", self.teacher.api_keys())
            log.warning("%s", reason)
            failed = TeacherFailed(self.teacher.name, reason)
            failed.usage = call.billed  # the caller's record counts what the failed attempts were billed
            raise failed from None
        except BudgetExhausted:  # ends the run, not the request (no retry, no TeacherFailed): nothing is in flight
            if call.begun:
                self.cache.finish(call.key)
            raise
        except asyncio.CancelledError:  # marked but never sent (e.g. held by a halted budget): no double send
            if call.begun and call.attempts == 0:
                self.cache.finish(call.key)
            raise

    def _on_retry(self, error: ProviderError, failures: int, wait: float) -> None:
        self.stats.retries += 1
        # INFO, not WARNING: retries are routine and the progress bar counts them; final failures warn.
        log.info("%s (retry %d in %.2f s)", error, failures, wait)

    def _pick_key(self) -> tuple[ChatProvider, Gate]:
        """The key that can send soonest (see the module docstring)."""
        now = asyncio.get_running_loop().time()
        gates = [(provider, gate_for(view)) for view, provider in self.keys]
        return min(gates, key=lambda pg: (pg[1].quota_until > now, max(pg[1].cooldown_until - now, 0.0), pg[1].load))

    async def _attempt(self, call: _Call) -> ChatResponse:
        self.budget.check()  # a run stopped by its budget takes no more turns at gates it may share (fair serve)
        loop = asyncio.get_running_loop()
        provider, gate = self._pick_key()
        gate.load += 1
        try:
            t0 = loop.time()
            await self._admit(gate, call.estimate)
            try:
                while (delay := gate.cooldown_until - loop.time()) > 0:  # re-checked: a 429 may extend it
                    await asyncio.sleep(delay)
                self.stats.wait_s += loop.time() - t0
                if gate.out_of_quota is not None and loop.time() < gate.quota_until:  # this key's account said so
                    self._settle(gate, call.estimate, None)
                    raise QuotaExhausted(str(gate.out_of_quota))  # not sent
                if not call.begun:  # right before the first send: a kill from here on may mean a double send
                    call.begun = True  # before the await: a request cancelled while its mark commits is unmarked
                    await self.cache.mark_inflight(call.key, self.teacher.name)
                reservation = await self.budget.reserve(worst_case_usd(self.teacher, call.request))  # the cost
                call.attempts += 1
                self.stats.requests += 1
                try:
                    response = await provider.complete(call.request)
                except ProviderError as e:
                    billed = self._settle(gate, call.estimate, e.usage)
                    call.bill(e.usage)
                    self.budget.settle(reservation, reservation.usd if e.maybe_billed else billed)
                    self._on_failure(gate, e)
                    raise
                except BaseException:  # cancelled in flight: it may have been billed, so its worst case
                    self.budget.settle(reservation, reservation.usd)
                    raise
            finally:
                gate.slots.release()
        finally:
            gate.load -= 1
        self.cache.put(call.key, self.teacher.name, response)  # first, before anything else can fail
        self.budget.settle(reservation, self._settle(gate, call.estimate, response.usage))
        self.stats.replied(response)
        self._read_limits(gate, response.limits, call)
        return response

    async def _admit(self, gate: Gate, estimate: int) -> None:
        """A concurrency slot and a place in the request limits, then the tokens (returns holding the slot). With an
        admission, whose request takes the next slot and place is its choice (fair shares between a server's
        jobs); the tokens are waited for after the turn, so a request waiting up to a minute for them keeps no
        other request of the gate waiting behind it."""
        async with self.admission.turn(gate) if self.admission else contextlib.nullcontext():
            await gate.slots.acquire()
            try:
                placed = await self._place(gate)
            except BaseException:
                gate.slots.release()
                raise
        try:
            await self._take_tokens(gate, estimate, placed)
        except BaseException:
            gate.slots.release()
            raise

    # -- limits ------------------------------------------------------------------------------------------

    async def _place(self, gate: Gate) -> float:
        """Take a request token and a place in the last minute's quota; returns the place's time."""
        await gate.requests.acquire()
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while gate.sent and gate.sent[0] <= now - WINDOW_S:
                gate.sent.popleft()
            cap = gate.rpm if now >= gate.slow_until else max(1, int(gate.rpm * SLOW_FACTOR))
            if len(gate.sent) < cap:
                gate.sent.append(now)  # no await since the check: no other request can slip in between
                return now
            await asyncio.sleep(gate.sent[len(gate.sent) - cap] + WINDOW_S - now)

    async def _take_tokens(self, gate: Gate, estimate: int, placed: float) -> None:
        """The token estimate net of the balance. A request that had to wait for it moves its place in the last
        minute's quota to now, when it is sent, so that the window does not let it out a wait too early."""
        want = estimate - gate.token_balance
        charge = min(max(want, 0.0), gate.tokens.max_rate)  # the bucket cannot take more than it holds
        gate.token_balance = charge - want  # what is left: credit (want < 0) or debt (want > capacity)
        if not charge:
            return
        waits = not gate.tokens.has_capacity(charge)
        await gate.tokens.acquire(charge)
        if waits:
            with contextlib.suppress(ValueError):  # already out of the window: nothing to move
                gate.sent.remove(placed)
            gate.sent.append(asyncio.get_running_loop().time())

    def _settle(self, gate: Gate, estimate: int, usage: Usage | None) -> float:
        """Give the gate back what an attempt did not use, and bill what it did; returns the cost billed. usage None:
        nothing was billed (an HTTP error, a timeout), the whole estimate comes back; a reply without counts leaves
        it standing."""
        actual = usage.input_tokens + usage.output_tokens if usage is not None else 0
        if usage is None or actual:
            gate.token_balance = min(gate.token_balance + estimate - actual, gate.tokens.max_rate)
        if usage is None:
            return 0.0
        cost = self.teacher.cost(usage)
        self.stats.bill(usage, cost)
        return cost

    def _on_failure(self, gate: Gate, error: ProviderError) -> None:
        if isinstance(error, RateLimited):
            self.stats.rate_limited += 1
            gate.rate_limited += 1
            self._on_rate_limited(gate, error.retry_after)
        elif isinstance(error, QuotaExhausted):
            gate.out_of_quota = error
            gate.quota_until = asyncio.get_running_loop().time() + QUOTA_HOLD_S

    def _cool_down(self, gate: Gate, seconds: float) -> None:
        until = asyncio.get_running_loop().time() + min(seconds, MAX_COOLDOWN_S)
        if until > gate.cooldown_until:
            gate.cooldown_until = until
            log.info("%s: cooling down for %.1f s", self.teacher.name, min(seconds, MAX_COOLDOWN_S))

    def _on_rate_limited(self, gate: Gate, retry_after: float | None) -> None:
        self._cool_down(gate, retry_after if retry_after is not None else self.retry.backoff_s)
        gate.slow_until = asyncio.get_running_loop().time() + SLOW_S

    def _read_limits(self, gate: Gate, limits: RateLimitInfo | None, call: _Call) -> None:
        """Cool down until the reset of any budget the reply says cannot take this request again: requests, tokens
        (its estimate), Anthropic's input tokens (its prompt) and output tokens (its max output)."""
        if limits is None:
            return
        needs = (1, call.estimate, call.input_estimate, call.output_limit)
        resets = [reset for (remaining, reset), need in zip(limits.budgets(), needs, strict=True)
                  if remaining is not None and remaining < need and reset]
        if resets:
            self._cool_down(gate, max(resets))
