"""One budget for every job of a `fair serve`: fair turns weighted by priority, a reserve for interactive
requests, and two real jobs on one key that together stay within the key's rpm with no 429."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from aiolimiter import AsyncLimiter

from gen.teachers.cache import ResponseCache
from gen.teachers.client import TeacherClient
from gen.teachers.config import Teacher
from gen.teachers.providers import ChatRequest, ChatResponse
from serve.budget import Budget
from simulator.server import OfflineServer
from tests.conftest import import_seed_mistakes
from tests.serve_util import Served, submit, teachers_yaml, upload_mistakes, wait_job


@dataclass
class FakeGate:
    rpm: int = 600
    sent: deque = field(default_factory=deque)
    tokens: AsyncLimiter = field(default_factory=lambda: AsyncLimiter(100_000, 60))


async def take_turns(budget: Budget, gate: FakeGate, tenants, turns: int, workers: int = 8) -> Counter:
    """Each tenant keeps `workers` requests waiting; the first `turns` turns are counted by tenant."""
    served: list[str] = []

    async def worker(tenant) -> None:
        while len(served) < turns:
            async with tenant.turn(gate):
                if len(served) < turns:
                    served.append(tenant.name)
                await asyncio.sleep(0)

    await asyncio.gather(*(worker(t) for t in tenants for _ in range(workers)))
    return Counter(served)


def test_turns_are_shared_in_proportion_to_priority():
    async def run() -> Counter:
        budget = Budget()
        tenants = [budget.tenant("low", 1), budget.tenant("high", 3)]
        return await take_turns(budget, FakeGate(), tenants, 400)

    counts = asyncio.run(run())
    assert counts["high"] == pytest.approx(300, abs=6) and counts["low"] == pytest.approx(100, abs=6)


def test_an_idle_job_cannot_bank_turns():
    async def run() -> Counter:
        budget, gate = Budget(), FakeGate()
        early, late = budget.tenant("early"), budget.tenant("late")
        await take_turns(budget, gate, [early], 200)  # `late` had nothing to send meanwhile
        return await take_turns(budget, gate, [early, late], 100)

    counts = asyncio.run(run())
    assert counts["late"] == pytest.approx(
        50, abs=2
    )  # an even split from here on, not 100 turns of catching up


def test_a_tiny_priority_keeps_passes_finite_and_shares_fairly():
    async def run() -> tuple[Counter, Budget]:
        budget = Budget()  # two equal jobs of priority 5e-324 (an old row): clamped, not an infinite stride
        tenants = [budget.tenant("a", 5e-324), budget.tenant("b", 5e-324)]
        return await take_turns(budget, FakeGate(), tenants, 100), budget

    counts, budget = asyncio.run(run())
    assert counts["a"] == pytest.approx(50, abs=2)
    assert all(math.isfinite(p) for q in budget.queues.values() for p in q.passes.values())


def test_finished_tenants_leave_the_queues():
    async def run() -> Budget:
        budget, gate = Budget(), FakeGate()
        for i in range(200):
            tenant = budget.tenant(f"job{i}")
            await take_turns(budget, gate, [tenant], 3)
            tenant.close()  # the job ended
        await take_turns(budget, gate, [budget.tenant("live")], 3)
        return budget

    (queue,) = asyncio.run(run()).queues.values()
    assert len(queue.passes) <= 1 and len(queue.waiting) <= 1


async def half_used_rpm() -> FakeGate:
    """Half the key's minute used: the jobs' share."""
    return FakeGate(rpm=10, sent=deque([asyncio.get_running_loop().time()] * 5))


async def most_of_the_tokens_taken() -> FakeGate:
    """60% of the key's token bucket taken: a job waits for 10% to drain (6 s at 1000 a minute)."""
    gate = FakeGate(tokens=AsyncLimiter(1000, 60))
    await gate.tokens.acquire(600)
    return gate


@pytest.mark.parametrize("make_gate", [half_used_rpm, most_of_the_tokens_taken], ids=["rpm", "tpm"])
def test_the_reserve_keeps_room_for_interactive_requests(make_gate):
    """With reserve 0.5 and the jobs' share of the key's requests (or tokens) spent, a job waits and an
    interactive request goes."""
    async def run() -> tuple[bool, bool]:
        budget, gate = Budget(reserve=0.5), await make_gate()
        job, interactive = budget.tenant("job"), budget.tenant("interactive", interactive=True)

        async def one(tenant) -> bool:
            try:
                async with asyncio.timeout(0.3):
                    async with tenant.turn(gate):
                        return True
            except TimeoutError:
                return False

        return await one(job), await one(interactive)

    assert asyncio.run(run()) == (False, True)


class Instant:
    """A provider that answers at once with no token counts (the gate keeps each request's estimate)."""

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse("ok", 0, 0)


def test_a_request_waiting_for_tokens_holds_no_turn(tmp_path):
    """A big request that must wait most of a minute for its tokens waits after its turn: another job's small
    request on the same key goes meanwhile (it held the turn, and so the whole key, for that minute)."""
    teacher = Teacher(name="t", provider="openai", model="m", base_url="http://test/v1", rpm=6000, tpm=1000,
                      max_tokens=900)

    def ask(i: int, max_tokens: int) -> ChatRequest:
        return ChatRequest((("user", f"q{i}"),), max_tokens=max_tokens)

    async def run() -> bool:
        budget = Budget()
        big, small = budget.tenant("big"), budget.tenant("small")
        async with httpx.AsyncClient() as http:
            with ResponseCache(tmp_path / "c.sqlite") as cache:
                clients = {tenant.name: TeacherClient(teacher, cache, http, Instant(), admission=tenant)
                           for tenant in (big, small)}
                await clients["big"].complete(ask(1, 880))  # ~890 of the key's 1000 tokens a minute
                waiting = asyncio.create_task(clients["big"].complete(ask(2, 880)))
                for _ in range(20):  # its turn, its place, and then the wait for tokens
                    await asyncio.sleep(0)
                other = asyncio.create_task(clients["small"].complete(ask(3, 16)))
                done, _ = await asyncio.wait({waiting, other}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
                return other in done and waiting not in done

    assert asyncio.run(run())


def sliding_max(times: list[float], window: float = 60.0) -> int:
    times, best, start = sorted(times), 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_jobs_on_one_key_stay_within_its_rpm_with_fair_shares(tmp_path, data_dir):
    """Two jobs, each of which alone would fill the key: together they stay within R requests in every 60 s
    window (the simulator enforces R and would answer 429), and each gets at least a third of the throughput.
    Two separate `fair committee` processes would each send R a minute: 429s from second 30 on."""
    rpm, log = 60, tmp_path / "sim.log"
    mistakes = import_seed_mistakes(tmp_path, data_dir, count=24)
    with OfflineServer(port=0, data_dir=data_dir, rpm=rpm, log_path=log) as sim:
        with (
            Served(tmp_path / "state", teachers_yaml(tmp_path, sim.url, rpm=rpm), sim.url) as served,
            served.client() as http,
        ):
            pair = ["careful", "sloppy"]  # 6 requests a mistake, 3 on each key
            jobs = [
                submit(http, upload_mistakes(http, mistakes, 12, start=12 * i), teachers=pair, window=4)
                for i in range(2)
            ]
            while all(http.get(f"/v1/fair/jobs/{j['id']}").json()["status"] != "completed" for j in jobs):
                time.sleep(0.5)
            shares = [http.get(f"/v1/fair/jobs/{j['id']}").json()["progress"]["requests"] for j in jobs]
            finished = [wait_job(http, j["id"], timeout=120) for j in jobs]
        rate_limited = sim.counters["rate_limited"]

    assert all(j["status"] == "completed" and j["progress"]["done"] == 12 for j in finished)
    assert rate_limited == 0
    entries = [orjson.loads(x) for x in log.read_bytes().splitlines()]
    for model in ("sim-careful", "sim-sloppy"):
        times = [e["t"] for e in entries if e["model"] == model and e["status"] == 200]
        assert len(times) == 2 * 12 * 3 and sliding_max(times) <= rpm
    assert min(shares) >= sum(shares) / 3, shares  # when the first job ended, the other had at least a third
