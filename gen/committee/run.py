"""Stage 2, ask the committee: every teacher writes feedback and a rationale for each mistake; by default a
rationale qualifies when the task's grader finds the gold answer in it (`--filter gold`: no review request), and
under the paper's recipe (`--filter review`) every rationale is peer-reviewed by the other teachers.

    fair committee --task svamp --teachers offline --base-url http://127.0.0.1:8765
    fair committee --task svamp --filter review        # the paper's recipe: every rationale peer-reviewed
    fair committee --task svamp --filter gold --samples 4   # four rationales per teacher and mistake
    fair committee --task svamp --server http://127.0.0.1:8765   # as a job of `fair serve` (serve/)
    fair committee --task gsm8k --teachers default --window 128
    fair committee --task gsm8k --teachers default --batch-api   # OpenAI's Batch API first: half price, slower

Streaming, with no stage barriers: each mistake is a small graph of requests (feedback and rationale from
every teacher at once; each rationale's reviews as soon as it exists), and at most `window` mistakes are
in flight, read lazily from mistakes.jsonl. Throughput is set by the teachers' rate limits, not latency.

Durable: every response goes to the SQLite cache the moment it arrives, and each finished mistake is appended
to committee.jsonl at once (fsynced every second; gen/teachers/cache.py and fair/jsonl.py say why in groups). A rerun
skips finished ids and gets every cached response for free, so after a kill only the requests in flight at
that moment are sent again; the rerun says how many. Memory stays flat whatever the corpus: the window,
the set of finished ids (tens of bytes each) and counters (make bench-scale measures it). One run per
folder: a second `fair committee` on a folder in use fails at once, naming the first one's pid (fair/lock.py).

Recipes (fair/recipes.py): --filter says which rationales qualify (`accepted`): review (the peers accept it),
gold (the task's grader finds the gold answer: no review request is sent, 2T requests a mistake instead of
T(T + 1)), gold+review (only rationales that pass the gold check are reviewed: fewer review requests) or none.
Every rationale's gold check is recorded (`gold`). --samples K asks each teacher for K rationales a mistake,
each seeded apart (gen/committee/mistake.py), at the temperature of the teacher's YAML (or --teacher-temperature,
every teacher's): at 0 they may coincide, and the run says so. An output keeps one recipe: resuming it with another
filter, sample count, teacher temperatures, prompt set or (under review) threshold is refused, naming the record:
its records would mean two things (each record carries its recipe).

Budget: with max_cost_usd, no request is sent that could take what this folder's cache has spent past it
(gen/teachers/budget.py); the run then stops cleanly, writes what finished and says how many mistakes remain,
and a rerun with a higher budget goes on, spending only the difference. It cannot be combined with batch_api.

Replies the provider billed but that are not whole answers are recorded as such and never sent again: a
refusal (text null, `refused` the provider's reason) and a reply cut off at max_tokens (`truncated`, text
kept). Neither rationale is sent for review nor accepted, neither review gives a score; a cut-off feedback is
kept, marked, and not trained on (fair/records.py's usable_text). A teacher out of quota stops the run:
nothing more is sent, the requests already in flight (paid for) land in the cache, what finished is written,
the rest (never sent) is cancelled, the CLI says how many mistakes remain and exits 2; a rerun
once the account has credit resumes (RunStopped).

With batch_api, the feedback and rationales of teachers with batch_api: true are first asked through OpenAI's
Batch API, which only fills the cache (gen/teachers/batch.py); the streaming run then finds them there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from tqdm.contrib.logging import logging_redirect_tqdm

from fair.config import Validated, at_least, save_config
from fair.errors import FairError
from fair.jsonl import JsonlAppender, read_jsonl, unique_ids
from fair.lock import folder_lock
from fair.models import DEFAULT_STUDENT
from fair.progress import Progress
from fair.recipes import DEFAULT_FILTER, Filter, check_filter, recorded_filter, reviews
from fair.records import StudentAnswer
from fair.student import run_dir
from fair.tasks import get_task
from gen.committee.mistake import Context, OutOfQuota, process
from gen.committee.prompts import PROMPT_SETS, drafts, prompts_label
from gen.committee.report import print_summary, progress_line, review_outcomes, write_stats
from gen.teachers.batch import DEADLINE_S, BatchRun
from gen.teachers.budget import BudgetExhausted, CostBudget
from gen.teachers.cache import ResponseCache
from gen.teachers.client import TeacherClient
from gen.teachers.config import Teacher, load_committee, missing_keys
from gen.teachers.gates import Admission
from gen.teachers.providers import http_client

T = TypeVar("T")


@dataclass
class CommitteeConfig(Validated):
    task: str = "svamp"  # the benchmark (`fair tasks` lists them)
    student: str = DEFAULT_STUDENT  # names the default folder data/<task>/<student>/
    mistakes: str | None = None  # default data/<task>/<student>/mistakes.jsonl
    teachers: str = "default"  # a committee in configs/teachers/ or a YAML path
    base_url: str | None = None  # send every teacher to this server (e.g. the offline committee)
    prompts: Literal["fair", "paper"] = "fair"  # ours (gen/committee/prompts.py), or the paper's for parity
    filter: Filter = DEFAULT_FILTER  # which rationales qualify: gold (no reviews) | review (peers; the paper's) | gold+review | none
    samples: int = 1  # rationales per teacher and mistake, each its own seeded sample (reviewed and checked alone)
    teacher_temperature: float | None = None  # every teacher's sampling temperature over its YAML's (None: the YAML's)
    threshold: float = 3.0  # a rationale is accepted when its mean valid review score is above this
    window: int = 64  # mistakes in flight at once; bounds memory and what a kill can repeat
    limit: int | None = None  # first N mistakes; None for all
    out: str | None = None  # default committee.jsonl beside the mistakes
    cache: str | None = None  # default requests.sqlite beside the output
    batch_api: bool = False  # feedback and rationales of batch_api teachers via OpenAI's Batch API (half price)
    batch_poll_s: float = 60.0  # longest wait between a batch's status checks (from 1 s, doubling)
    batch_deadline_s: float = DEADLINE_S  # a batch still open this long after its creation is cancelled: live
    progress: bool = True  # progress on stderr: a bar on a terminal, else a line every 30 s (fair/progress.py)
    server: str | None = None  # a `fair serve` URL: run there as a job (its committee) and download the output
    priority: float = 1.0  # with server: the job's weight where it shares the teachers' limits with other jobs
    max_cost_usd: float | None = None  # USD this folder may spend at most, over all runs (gen/teachers/budget.py)

    def validate(self) -> None:
        get_task(self.task)
        check_filter(self.filter)
        if not 1 <= self.threshold <= 5:
            raise FairError(f"threshold must be within the 1-5 score range, got {self.threshold}")
        at_least(self, 1, "window", "limit", "samples")
        if self.server and (self.base_url or self.batch_api):
            raise FairError("with server, the server's committee answers: base_url and batch_api are its own")
        if self.teacher_temperature is not None and self.teacher_temperature < 0:
            raise FairError(f"teacher_temperature must be >= 0, got {self.teacher_temperature}")
        if self.priority <= 0:
            raise FairError(f"priority must be positive, got {self.priority}")
        if self.max_cost_usd is not None and (self.max_cost_usd <= 0 or self.batch_api):
            raise FairError(f"max_cost_usd must be positive and cannot cap batch_api (a batch bills all it was "
                            f"given, up to 24 h later), got {self.max_cost_usd} with batch_api={self.batch_api}")
        if self.batch_poll_s <= 0 or self.batch_deadline_s <= 0:
            raise FairError(f"batch_poll_s and batch_deadline_s must be positive, got {self.batch_poll_s} and "
                            f"{self.batch_deadline_s}")

    def sampled(self, teachers: list[Teacher]) -> list[Teacher]:
        """The teachers at --teacher-temperature where it is given, else at their YAML's."""
        if self.teacher_temperature is None:
            return teachers
        return [dataclasses.replace(t, temperature=self.teacher_temperature) for t in teachers]

    @property
    def mistakes_path(self) -> Path:
        return Path(self.mistakes or run_dir(self.task, self.student) / "mistakes.jsonl")

    @property
    def out_path(self) -> Path:
        return Path(self.out or self.mistakes_path.with_name("committee.jsonl"))

    @property
    def cache_path(self) -> Path:
        return Path(self.cache or self.out_path.with_name("requests.sqlite"))


class RunStopped(FairError):
    """The run stopped before its end with everything finished written; `result` is what it did (the CLI still
    prints it and writes committee_stats.json). The message is the one line the user reads."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


# ----------------------------------------------------------------------------------------------------------
# The run: stream mistakes through a bounded window, append finished records


@dataclass
class Hooks:
    """What a long-lived caller plugs into a run (`fair serve`'s jobs, serve/jobs.py); the CLI needs none."""

    admission: Admission | None = None  # whose request goes next through a gate shared with other jobs
    # Told, once the clients exist, how many requests may be sent twice (in flight when the last run was killed).
    started: Callable[[int, dict[str, TeacherClient]], None] = lambda repeated, clients: None
    # After each group of records is written, with the run's clients and its records so far; raising stops the run.
    written: Callable[[dict[str, TeacherClient], int], None] = lambda clients, written: None


def existing_mistakes(config: CommitteeConfig) -> Path:
    path = config.mistakes_path
    if not path.exists():
        raise FairError(f"no mistakes file {path}: run `fair mine --task {config.task}` first, or pass --mistakes")
    return path


def pending_mistakes(config: CommitteeConfig, done: set[str]) -> Iterator[StudentAnswer]:
    path = existing_mistakes(config)
    for i, record in enumerate(unique_ids(read_jsonl(path))):  # --limit counts distinct mistakes
        if config.limit is not None and i >= config.limit:
            return
        answer = StudentAnswer.from_json(record, f"{path} record {i}")
        if answer.task != get_task(config.task).name:
            raise FairError(f"{path} record {i}: task {answer.task!r}, expected {config.task!r}")
        if answer.id not in done:
            yield answer


def count_mistakes(config: CommitteeConfig) -> int:
    """Distinct mistakes, at most --limit: what pending_mistakes reads (an id written twice is one mistake)."""
    distinct = sum(1 for _ in unique_ids(read_jsonl(existing_mistakes(config))))
    return distinct if config.limit is None else min(distinct, config.limit)


def finished_ids(path: Path, recipe: dict[str, Any] | None = None) -> set[str]:
    """The ids already in the output; with `recipe` (`run_recipe`), FairError if a record there was written under
    another one: its texts or `accepted` would mean something else than the new records' under one name."""
    done = set()
    for i, record in enumerate(read_jsonl(path) if path.exists() else ()):
        for key, value in (recipe or {}).items():
            # Older records lack temperatures, and the paper's files a filter (theirs was review).
            had = recorded_filter(record) if key == "filter" else record.get(key, value)
            if had != value:
                name = RECIPE_NAMES[key]
                raise FairError(f"{path} record {i}: written with {name} {shown(had)}, not {shown(value)}: one file "
                                f"holds one recipe; rerun with {name} {shown(had)} to continue it, or write to another "
                                f"--out beside it (its folder's cache answers what is unchanged again for free)")
        done.add(record["id"])
    return done


RECIPE_NAMES = {"prompts": "--prompts", "filter": "--filter", "samples": "--samples", "threshold": "--threshold",
                "temperatures": "teacher temperatures"}


def run_recipe(config: CommitteeConfig, teachers: list[Teacher]) -> dict[str, Any]:
    """The fields of a record (gen/committee/mistake.py) that this run's records will share: the threshold only
    where reviews decide `accepted`."""
    recipe = {"prompts": prompts_label(config.prompts), "filter": config.filter, "samples": config.samples,
              "temperatures": {t.name: t.temperature for t in teachers}}
    return recipe | ({"threshold": config.threshold} if reviews(config.filter) else {})


def shown(value: Any) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in value.items()) if isinstance(value, dict) else f"{value}"


async def run_committee(config: CommitteeConfig, teachers: list[Teacher], hooks: Hooks | None = None) -> dict[str, Any]:
    # Before the finished ids and the cache's in-flight marks are read: a second run would take the first
    # one's requests in flight for a crash's leftovers, and answer (and pay for) every mistake again.
    with folder_lock(config.out_path.parent, "committee"):
        return await stream_committee(config, teachers, hooks or Hooks())


async def stream_committee(config: CommitteeConfig, teachers: list[Teacher], hooks: Hooks) -> dict[str, Any]:
    """RunStopped (with the result) when a teacher is out of quota or the budget is reached: what finished is
    written, the rest is cancelled once nothing is in flight (their replies are cached) and a rerun resumes."""
    task = get_task(config.task)
    done = finished_ids(config.out_path, run_recipe(config, teachers))
    mistakes = pending_mistakes(config, done)
    cache = ResponseCache(config.cache_path)
    repeated = cache.abandoned_inflight()
    if repeated:
        print(f"resuming: {repeated} request(s) were in flight when the last run stopped and may be sent again")
    save_config(config, config.out_path.with_name("committee.yaml"))
    budget = CostBudget(config.max_cost_usd, cache.spent_usd, ledger=cache)  # the folder's spending so far
    total = count_mistakes(config)
    with cache, JsonlAppender(config.out_path) as out:  # closing commits what is pending, also on Ctrl-C
        async with httpx.AsyncClient() as http, contextlib.AsyncExitStack() as pools:
            # A connection pool per teacher, sized to its keys' concurrency.
            clients = {t.name: TeacherClient(t, cache, await pools.enter_async_context(
                http_client(t.max_concurrency * len(t.per_key()))), admission=hooks.admission, budget=budget)
                for t in teachers}
            hooks.started(repeated, clients)
            ctx = Context(task, config.prompts, PROMPT_SETS[config.prompts], clients,
                          {t.name: t for t in teachers}, config.threshold, config.filter, config.samples)
            batch = None
            if config.batch_api:  # fills the cache; the streaming run below then sends only what it still lacks
                batched = [t for t in teachers if t.batch_api]
                stats = {t.name: clients[t.name].stats for t in batched}
                batch = await BatchRun(batched, cache, http, stats, config.batch_poll_s,
                                       deadline_s=config.batch_deadline_s, budget=budget).run(
                    drafts(pending_mistakes(config, done), task, ctx.prompts, batched, config.samples))
            bar = Progress(f"committee {task.name}", total, unit="mistakes", initial=len(done),
                           enabled=config.progress)
            started, written = time.perf_counter(), 0

            def write(finished: set[asyncio.Task]) -> None:
                nonlocal written
                # Every outcome is read (one left unread is a traceback in asyncio's log at exit), and what did
                # finish is written before a failure (a full disk) stops the run.
                errors = [e for t in finished if (e := t.exception()) is not None]
                records = [t.result() for t in finished if t.exception() is None]
                out.write(records)
                written += len(records)
                bar.note(progress_line(clients, time.perf_counter() - started, ctx.errors))
                bar.update(len(records))  # after the note: a plain line printed here shows the counts as they are
                if errors:
                    raise errors[0]
                hooks.written(clients, written)

            try:
                window = stream_window(lambda a: process(ctx, a), mistakes, config.window, write, lambda: drain(budget))
                stopped = await until_stopped(window, budget, total)
            finally:
                bar.close()
    result = {"written": written, "skipped": len(done), "total": total, "repeated_after_kill": repeated,
              "seconds": time.perf_counter() - started, "cache_commits": cache.commits, "batch": batch,
              "stats": {n: c.stats for n, c in clients.items()}, "stopped": stopped, "budget": budget_stats(budget),
              "outcomes": review_outcomes(config.out_path), "filter": config.filter, "samples": config.samples}
    if stopped:
        result["stopped"] = stopped.format(remaining=max(total - len(done) - written, 0))
        raise RunStopped(result["stopped"], result)
    return result


async def until_stopped(run: Coroutine[Any, Any, None], budget: CostBudget, total: int) -> str | None:
    """Await the run; None when it ended, else why it stopped early (with a {remaining} to fill in)."""
    try:
        await run
    except OutOfQuota as e:
        return f"{e}; {{remaining}} of {total} mistakes remain; rerun once the account has credit"
    except BudgetExhausted:  # nothing was in flight; what finished is written, the rest waits for a rerun
        return (f"budget reached: spent ${budget.total_usd:.4f} of ${budget.limit_usd:.4f}; {{remaining}} of {total} "
                f"mistakes remain; rerun with a higher --max-cost-usd to continue")
    return None


async def drain(budget: CostBudget) -> None:
    """Send nothing more, and return once every request in flight has its reply (in the cache)."""
    budget.halt()
    await budget.drained()


def budget_stats(budget: CostBudget) -> dict[str, Any]:
    return {"max_cost_usd": budget.limit_usd, "spent_usd": round(budget.total_usd, 6),
            "spent_this_run_usd": round(budget.spent_usd, 6), "reached": budget.exhausted is not None}


async def stream_window(work: Callable[[T], Coroutine[Any, Any, Any]], items: Iterator[T], window: int,
                        write: Callable[[set[asyncio.Task]], None],
                        drain: Callable[[], Awaitable[None]] | None = None) -> None:
    """`work` on each item, at most `window` at once; `write` gets each group that finishes. When anything fails
    (or on Ctrl-C), the rest are cancelled and awaited, so that none is left running or unread for asyncio's log.
    On a failure (a full disk), not Ctrl-C, `drain` runs first: the committee's stops sending and waits for the
    requests in flight, which are paid for, to land in the cache, so that a rerun does not pay for them again.
    (Also `fair serve`'s batches, one request a line.)"""
    in_flight: set[asyncio.Task] = set()
    try:
        for item in items:
            if len(in_flight) >= window:
                finished, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                write(finished)
            in_flight.add(asyncio.create_task(work(item)))
        while in_flight:
            finished, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            write(finished)
    except BaseException as e:
        if drain is not None and isinstance(e, Exception):
            await drain()
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        raise


def committee(config: CommitteeConfig) -> dict[str, Any]:
    existing_mistakes(config)  # before any file is opened: a wrong path leaves nothing behind
    teachers = config.sampled(load_committee(config.teachers, config.base_url))
    if config.batch_api and not any(t.batch_api for t in teachers):
        raise FairError(f"batch_api: no teacher of committee {config.teachers!r} has batch_api: true (an OpenAI "
                        f"endpoint that serves the Batch API)")
    if config.samples > 1 and (same := [t.name for t in teachers if t.temperature == 0]):
        print(f"warning: teacher(s) {', '.join(same)} sample at temperature 0: their {config.samples} samples may "
              f"coincide (seeds change little at 0, and Anthropic's API takes none); set a temperature in the "
              f"teachers' YAML or --teacher-temperature")
    if missing := missing_keys(teachers):
        raise FairError(f"committee {config.teachers!r} needs the environment variable(s) {', '.join(missing)}; "
                        f"set them, or use the offline simulator: make gen TEACHERS=offline")
    with logging_redirect_tqdm():  # log lines print above the progress bar instead of through it
        try:
            result = asyncio.run(run_committee(config, teachers))
        except RunStopped as stop:  # what finished is reported and counted, then the one line and exit 2
            finish(config, teachers, stop.result)
            raise
    finish(config, teachers, result)
    return result


def finish(config: CommitteeConfig, teachers: list[Teacher], result: dict[str, Any]) -> None:
    print_summary(config.out_path, teachers, result)
    write_stats(config.out_path, result)
