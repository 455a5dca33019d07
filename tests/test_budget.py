"""CostBudget (gen/teachers/budget.py): reservations before the send, settles after, waiting for room, the clean
stop; through TeacherClient; and `fair committee --max-cost-usd` against the simulator, spent <= budget always,
resumable with a higher budget, nothing paid twice."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from cli.main import main
from fair.jsonl import read_jsonl
from gen.teachers.budget import BudgetExhausted, CostBudget, worst_case_usd
from gen.teachers.cache import ResponseCache
from gen.teachers.client import TeacherClient
from gen.teachers.config import Teacher, load_committee
from gen.teachers.providers import ChatRequest, ChatResponse, TransientError, Usage
from simulator.server import OfflineServer
from tests.conftest import ROOT, fast, import_seed_mistakes, run_small_committee

# ---------------------------------------------------------------------------------------------------------
# CostBudget alone


class Ledger:
    def __init__(self):
        self.saved: list[float] = []
        self.noted: list[float] = []

    async def save_spent(self, usd: float) -> None:
        await asyncio.sleep(0)
        self.saved.append(usd)

    def note_spent(self, usd: float) -> None:
        self.noted.append(usd)


async def settle_soon() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_concurrent_reservations_wait_for_room_and_settles_refund():
    async def go():
        budget = CostBudget(1.0)
        a, b = await budget.reserve(0.4), await budget.reserve(0.4)
        third = asyncio.create_task(budget.reserve(0.4))
        await settle_soon()
        assert not third.done() and budget.in_flight == 2  # 0.4 + 0.4 + 0.4 > 1: it waits, holding nothing
        budget.settle(a, 0.1)  # a refund of 0.3 makes room: 0.1 + 0.4 + 0.4 <= 1
        c = await asyncio.wait_for(third, 1)
        assert budget.total_usd == pytest.approx(0.9) and budget.in_flight == 2
        budget.settle(b, 0.2)
        budget.settle(c, 0.0)
        budget.settle(c, 0.5)  # a second settle of one reservation changes nothing
        assert (budget.spent_usd, budget.reserved_usd, budget.in_flight) == (pytest.approx(0.3), 0.0, 0)

    asyncio.run(go())


def test_waits_for_in_flight_then_stops_for_good_when_nothing_can_make_room():
    async def go():
        budget = CostBudget(1.0, spent_before_usd=0.2)
        a = await budget.reserve(0.5)
        waiting = asyncio.create_task(budget.reserve(0.5))
        await settle_soon()
        assert not waiting.done()  # 0.2 + 0.5 + 0.5 > 1, but the one in flight may refund
        budget.settle(a, 0.5)  # it did not: 0.7 spent, nothing in flight, 0.5 cannot fit
        with pytest.raises(BudgetExhausted, match=r"spent \$0.7000 of \$1.0000"):
            await asyncio.wait_for(waiting, 1)
        with pytest.raises(BudgetExhausted):  # for good: even what would fit is not sent once the run stops
            await budget.reserve(0.01)
        assert budget.in_flight == 0 and budget.total_usd == pytest.approx(0.7)

    asyncio.run(go())


def test_no_limit_only_counts_and_a_reservation_is_saved_before_it_is_returned():
    async def go():
        free = CostBudget(None)
        r = await free.reserve(1e9)
        free.settle(r, 3.0)
        assert free.total_usd == 3.0
        ledger = Ledger()
        budget = CostBudget(1.0, spent_before_usd=0.25, ledger=ledger)
        r = await budget.reserve(0.5)
        assert ledger.saved == [0.75]  # committed before the attempt may be sent: spent before + reserved
        budget.settle(r, 0.125)
        assert ledger.noted == [0.375]

    asyncio.run(go())


def test_the_cache_keeps_the_ledger_across_runs(tmp_path):
    async def go(usd: float):
        with ResponseCache(tmp_path / "requests.sqlite") as cache:
            before = cache.spent_usd
            budget = CostBudget(10.0, before, ledger=cache)
            budget.settle(await budget.reserve(1.0), usd)
            return before

    assert asyncio.run(go(0.5)) == 0.0
    assert asyncio.run(go(0.25)) == 0.5
    assert ResponseCache(tmp_path / "requests.sqlite").spent_usd == 0.75


def test_worst_case_bounds_bytes_and_max_tokens():
    t = Teacher(name="t", provider="openai", model="m", price_input=1.0, price_output=2.0)
    text = "Ünïcödé 数学 🙂" * 10  # multi-byte characters: bytes, not characters, bound the tokens
    request = ChatRequest((("system", "s"), ("user", text)), max_tokens=100)
    input_bound = len(b"s") + len(text.encode()) + 2 * 16 + 16
    assert worst_case_usd(t, request) == pytest.approx((input_bound * 1.0 + 100 * 2.0) / 1e6)
    # A Gemini thinking budget is output the reply may bill; an Anthropic cache write dearer than input prices it all.
    thinker = Teacher(name="g", provider="gemini", model="m", price_input=1.0, price_output=2.0, thinking_budget=50)
    assert worst_case_usd(thinker, request) == pytest.approx((input_bound * 1.0 + 150 * 2.0) / 1e6)
    writer = Teacher(name="a", provider="anthropic", model="m", price_input=1.0, price_output=2.0,
                     price_cache_write=1.25)
    assert worst_case_usd(writer, request) == pytest.approx((input_bound * 1.25 + 100 * 2.0) / 1e6)


# ---------------------------------------------------------------------------------------------------------
# Through TeacherClient


class Billed:
    """A provider that bills a random share of each request's worst case, fails now and then, never hangs."""

    def __init__(self, teacher: Teacher, seed: int):
        self.teacher, self.rng, self.sent, self.billed = teacher, random.Random(seed), 0, 0.0

    async def complete(self, req: ChatRequest) -> ChatResponse:
        self.sent += 1
        await asyncio.sleep(self.rng.uniform(0, 0.002))
        if self.rng.random() < 0.1:
            raise TransientError("503")  # not billed
        inputs = sum(len(c.encode()) for _, c in req.messages)
        out = self.rng.randint(1, req.max_tokens)
        self.billed += self.teacher.cost(Usage(inputs, out))
        return ChatResponse("ok", inputs, out)


@pytest.mark.parametrize("limit", [0.0001, 0.003, 0.02])
def test_clients_sharing_a_budget_never_pass_it(tmp_path, limit):
    teachers = [Teacher(name=f"t{i}", provider="openai", model=f"m{i}", base_url="http://test/v1", rpm=600_000,
                        tpm=100_000_000, max_tokens=300, price_input=1.0 + i, price_output=4.0 + i)
                for i in range(3)]

    async def go():
        budget = CostBudget(limit)
        async with httpx.AsyncClient() as http:
            with ResponseCache(tmp_path / "c.sqlite") as cache:
                clients = [TeacherClient(t, cache, http, Billed(t, i), budget=budget, backoff_s=0.001)
                           for i, t in enumerate(teachers)]
                calls = [c.complete(ChatRequest((("user", f"question {n} " * (n % 7 + 1)),), max_tokens=300))
                         for n in range(200) for c in clients]
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
                assert cache.inflight() == 0  # a request stopped by the budget is not left marked in flight
        return budget, clients, outcomes

    budget, clients, outcomes = asyncio.run(go())
    billed = sum(c.keys[0][1].billed for c in clients)
    assert billed <= limit and budget.total_usd == pytest.approx(billed) and budget.in_flight == 0
    assert all(isinstance(o, (ChatResponse, BudgetExhausted)) for o in outcomes)  # never a TeacherFailed
    assert any(isinstance(o, BudgetExhausted) for o in outcomes)
    assert all(c.stats.failures == 0 for c in clients)


# ---------------------------------------------------------------------------------------------------------
# `fair committee --max-cost-usd` against the simulator


def billed(log: list[dict], teachers: list[Teacher]) -> tuple[float, set[tuple[str, str]]]:
    """What the simulator answered (its request log): the cost at the teachers' prices, and the bodies."""
    by_model = {t.model: t for t in teachers}
    answered = [r for r in log if r["status"] == 200]
    cost = sum(by_model[r["model"]].cost(Usage(r["prompt_tokens"], r["completion_tokens"])) for r in answered)
    return cost, {(r["model"], r["body_sha256"]) for r in answered}


@pytest.mark.parametrize(("limit", "window"), [(0.004, 1), (0.01, 8), (0.02, 64), (0.002, 64), (0.012, 256)])
def test_the_committee_never_spends_past_its_budget_and_a_bigger_one_finishes(tmp_path, seed_mistakes, limit,
                                                                              window):
    log_path = tmp_path / "requests.log"
    with OfflineServer(port=0, log_path=log_path) as server:
        teachers = fast(load_committee("offline", server.url))

        def run(budget: float) -> tuple[dict, list[dict], list[dict]]:
            before = len(log_path.read_bytes().splitlines()) if log_path.exists() else 0
            result, records = run_small_committee(tmp_path, seed_mistakes, teachers, limit=12, window=window,
                                                  max_cost_usd=budget)
            return result, records, [orjson.loads(line) for line in log_path.read_bytes().splitlines()[before:]]

        first, records, log = run(limit)
        assert first["budget"]["reached"] and len(records) < 12
        paid_first, bodies_first = billed(log, teachers)  # the simulator's own count, not the client's
        assert paid_first <= limit and first["budget"]["spent_usd"] == pytest.approx(paid_first, abs=1e-6)
        # The same budget: it stops again at once, having sent at most what still fits (a cheaper request than
        # the one that stopped the first run may come first).
        again, _, log = run(limit)
        paid_again, bodies_again = billed(log, teachers)
        assert again["budget"]["reached"] and paid_first + paid_again <= limit
        second, records, log = run(limit + 0.2)
    assert not second["budget"]["reached"] and len({r["id"] for r in records}) == len(records) == 12
    paid_second, bodies_second = billed(log, teachers)
    paid = paid_first + paid_again + paid_second
    assert paid <= limit + 0.2 and second["budget"]["spent_usd"] == pytest.approx(paid, abs=1e-6)
    assert bodies_second and not (bodies_first | bodies_again) & bodies_second  # nothing paid for twice
    assert not bodies_first & bodies_again


def test_cli_stops_with_one_line_exit_2_and_stats_then_resumes(tmp_path, seed_mistakes, capsys):
    out = tmp_path / "committee.jsonl"
    with OfflineServer(port=0) as server:
        args = ["committee", "--task", "svamp", "--teachers", "offline", "--base-url", server.url, "--mistakes",
                str(seed_mistakes), "--out", str(out), "--limit", "5", "--no-progress"]
        assert main([*args, "--max-cost-usd", "0.006"]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        done = len(list(read_jsonl(out)))
        assert line.startswith("fair committee: error: budget reached: spent $")
        assert f"of $0.0060; {5 - done} of 5 mistakes remain; rerun with a higher --max-cost-usd" in line
        stats = orjson.loads((tmp_path / "committee_stats.json").read_bytes())
        assert stats["budget"]["reached"] and stats["budget"]["max_cost_usd"] == 0.006
        assert stats["budget"]["spent_usd"] <= 0.006 and stats["written"] == done
        assert main([*args, "--max-cost-usd", "1"]) == 0
    stats = orjson.loads((tmp_path / "committee_stats.json").read_bytes())
    assert not stats["budget"]["reached"] and stats["written"] == 5 - done
    assert len(list(read_jsonl(out))) == 5


def test_a_run_killed_mid_flight_and_rerun_stays_within_the_budget(tmp_path, seed_mistakes):
    """The ledger counts what was in flight at the kill at its worst case, so the rerun cannot pass the budget
    whatever the killed run had sent (the simulator's log is the bill, replies finished after the kill included)."""
    log_path, limit = tmp_path / "requests.log", 0.02
    with OfflineServer(port=0, log_path=log_path, latency_ms=(200, 400)) as server:
        args = ["committee", "--task", "svamp", "--teachers", "offline", "--base-url", server.url, "--mistakes",
                str(seed_mistakes), "--out", str(tmp_path / "committee.jsonl"), "--limit", "12", "--no-progress",
                "--max-cost-usd", str(limit)]
        killed = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not log_path.exists() or len(log_path.read_bytes().splitlines()) < 10:  # replies, more in flight
            assert time.monotonic() < deadline and killed.poll() is None
            time.sleep(0.02)
        killed.kill()
        killed.wait()
        assert main(args) == 2
    paid, _ = billed([orjson.loads(line) for line in log_path.read_bytes().splitlines()],
                     load_committee("offline"))
    assert 0 < paid <= limit


def test_a_budget_cannot_cap_the_batch_api(tmp_path, seed_mistakes, capsys):
    assert main(["committee", "--task", "svamp", "--teachers", "offline", "--mistakes", str(seed_mistakes),
                 "--out", str(tmp_path / "c.jsonl"), "--batch-api", "--max-cost-usd", "1"]) == 2
    assert "cannot cap batch_api" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# `fair serve` jobs' max_cost_usd: the same budget (it overshot 10-40x when checked as records were written)


@pytest.mark.timeout(120)
def test_a_serve_job_never_spends_past_its_cap_and_says_so(tmp_path, data_dir):
    from tests.serve_util import served_with_simulator, submit, upload_mistakes, wait_job

    mistakes = import_seed_mistakes(tmp_path, data_dir, count=20)
    with served_with_simulator(tmp_path, data_dir) as served, served.client() as http:
        file_id = upload_mistakes(http, mistakes)
        for window in (64, 256):
            job = wait_job(http, submit(http, file_id, window=window, max_cost_usd=0.01)["id"])
            assert job["status"] == "stopped" and job["progress"]["done"] < 20, job
            assert 0 < job["progress"]["cost"] <= 0.01
            stats = orjson.loads((served.state / "jobs" / job["id"] / "committee_stats.json").read_bytes())
            assert stats["budget"]["reached"] and stats["budget"]["max_cost_usd"] == 0.01
            assert stats["budget"]["spent_usd"] == pytest.approx(job["progress"]["cost"], abs=1e-6)


def test_every_attempt_waiting_for_room_stops_with_the_run():
    async def go():
        budget = CostBudget(1.0)
        a = await budget.reserve(0.6)
        waiting = [asyncio.create_task(budget.reserve(0.5)) for _ in range(3)]
        await settle_soon()
        budget.settle(a, 0.6)
        outcomes = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 1)
        assert all(isinstance(o, BudgetExhausted) for o in outcomes)

    asyncio.run(go())


@pytest.mark.parametrize(("failure", "maybe_billed"), [(httpx.ReadTimeout("slow"), True),
                                                       (httpx.RemoteProtocolError("dropped"), True),
                                                       (httpx.ConnectError("refused"), False),
                                                       (httpx.ConnectTimeout("no route"), False)])
def test_an_attempt_that_may_have_reached_the_provider_keeps_its_worst_case_spent(tmp_path, failure,
                                                                                 maybe_billed):
    """No reply says what a timed-out request cost, and the provider may still finish and bill it: the budget keeps
    its worst case; a connection that never opened cost nothing."""
    from gen.teachers.client import TeacherFailed

    teacher = Teacher(name="t", provider="openai", model="m", base_url="http://test/v1", max_retries=0,
                      price_input=1.0, price_output=4.0)
    request = ChatRequest((("user", "question"),), max_tokens=50)

    def fail(_: httpx.Request) -> httpx.Response:
        raise failure

    async def go() -> CostBudget:
        budget = CostBudget(1.0)
        async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as http:
            with ResponseCache(tmp_path / "c.sqlite") as cache, pytest.raises(TeacherFailed):
                await TeacherClient(teacher, cache, http, budget=budget).complete(request)
        return budget

    budget = asyncio.run(go())
    assert budget.in_flight == 0
    assert budget.total_usd == pytest.approx(worst_case_usd(teacher, request) if maybe_billed else 0.0)
