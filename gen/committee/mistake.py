"""One mistake through the committee (gen/committee/run.py streams many): every teacher's feedback and its
rationales (one, or `samples` of them) at once, each rationale's gold check and, where the run's filter asks for
them, its peer reviews as soon as it exists, and the record that gathers them with their usage (per teacher, and on
each reply: fair/prices.py prices a recipe's data from it).

The filter (fair/recipes.py) decides which rationales are reviewed: all whole ones (review), only those in which
the task's grader finds the gold answer (gold+review), or none (gold, none: no review request is sent), and
`accepted` records whether a rationale qualifies under it. The k-th sample of a teacher (k >= 2) is the same
prompt asked with sample salt k - 1 (a distinct cache key, and the provider's `seed` where it has one), keyed
"<teacher>#<k>"; the first is the request a one-sample run sends, so its cache entries serve both.

Replies the provider billed but that are not whole answers are kept as such (Reply): a refusal (text None,
`refused` the reason) and a reply cut off at max_tokens (`truncated`, text kept); neither rationale is reviewed
nor accepted, neither review scores. A teacher out of quota raises OutOfQuota, which ends the run: first the
run's budget is halted (nothing more is sent) and the requests already in flight, paid for, land in the cache;
then `gather_all` cancels the mistake's other requests, none of them sent, so that none is left running unowned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fair.paper import accept
from fair.prices import USAGE_FIELDS
from fair.recipes import Filter, finds_gold, gold_checks, qualifies, reviews
from fair.records import Messages, StudentAnswer, sample_key, usable_text
from fair.tasks import Task
from gen.committee.prompts import PromptSet, prompts_label
from gen.committee.review import parse_review_score
from gen.teachers.client import TeacherClient
from gen.teachers.config import Teacher
from gen.teachers.providers import ChatRequest, ProviderError, QuotaExhausted, Usage

T = TypeVar("T")


@dataclass
class Context:
    task: Task
    prompts_name: str
    prompts: PromptSet
    clients: dict[str, TeacherClient]
    teachers: dict[str, Teacher]
    threshold: float
    filter: Filter
    samples: int  # rationales per teacher and mistake
    errors: int = 0


@dataclass
class Reply:
    """One request's outcome as the record keeps it. A refusal and a reply cut off at max_tokens are answers
    the provider billed and the cache keeps: recorded as such, never sent again, never reviewed or scored."""

    text: str | None  # None: the request failed, or the provider refused it
    error: str | None
    usage: Usage = field(default_factory=Usage)
    batch: bool = False  # answered through the Batch API: billed at half price
    truncated: bool = False  # cut off at max_tokens: kept, marked, and neither reviewed nor accepted
    refused: str | None = None  # the provider's reason ("SAFETY", "content_filter", "refusal")

    def entry(self) -> dict[str, Any]:
        return {"text": self.text, "error": self.error, "truncated": self.truncated, "refused": self.refused,
                "usage": {**{k: getattr(self.usage, k) for k in USAGE_FIELDS}, "batch": self.batch}}

    @property
    def usable(self) -> bool:
        """May be sent for review or scored: a whole answer (a cut-off rationale has no final answer)."""
        return usable_text(self.entry()) is not None


class OutOfQuota(Exception):
    """A teacher's account has no credit left (QuotaExhausted): every request of the run would fail the same
    way, so the run stops (`stream_committee` says how) instead of recording a failure for each one."""

    def __init__(self, teacher: str, reason: str):
        super().__init__(f"teacher {teacher}: the account is out of quota ({reason})")


async def ask(ctx: Context, teacher: Teacher, messages: Messages, sample: int = 0) -> Reply:
    # As gen/committee/prompts.py's drafts build it for the Batch API: the same cache key.
    request = ChatRequest.for_teacher(teacher, messages, sample)
    try:
        response = await ctx.clients[teacher.name].complete(request)
    except QuotaExhausted as e:
        budget = ctx.clients[teacher.name].budget  # the run's, shared by every teacher
        budget.halt()  # no new sends; the requests in flight are paid for: their replies land in the cache first
        await budget.drained()
        raise OutOfQuota(teacher.name, str(e)) from None
    except ProviderError as e:  # TeacherFailed after retries, or a fatal 4xx: recorded, never a score
        ctx.errors += 1
        return Reply(None, str(e), e.usage or Usage())  # what a failed reply was billed, if anything
    text = None if response.refusal is not None else response.text
    return Reply(text, None, response.usage, response.batch, response.truncated, response.refusal)


async def gather_all(*jobs: Coroutine[Any, Any, T]) -> list[T]:
    """asyncio.gather, except that a failure (a teacher out of quota, a cancelled run) cancels the other jobs
    and waits for them before it propagates: gather alone would leave them running, and paying, unowned."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def rationale_with_reviews(ctx: Context, answer: StudentAnswer, author: Teacher,
                                 k: int = 1) -> tuple[dict, list[Reply]]:
    """The author's k-th rationale, its gold check, and the reviews the run's filter asks for."""
    rationale = await ask(ctx, author, ctx.prompts.rationale(ctx.task, answer), sample=k - 1)
    gold = rationale.usable and finds_gold(ctx.task, answer, rationale.text)
    record: dict[str, Any] = {**rationale.entry(), "gold": gold, "reviews": {}}
    replies = [rationale]
    # A failed, refused or cut-off rationale is never sent for review (no score could count), nor, under
    # gold+review, one that fails the free gold check (it could not qualify whatever the peers say).
    if rationale.usable and reviews(ctx.filter) and (gold or not gold_checks(ctx.filter)):
        reviewers = [t for name, t in ctx.teachers.items() if name != author.name]
        verdicts = await gather_all(
            *(ask(ctx, r, ctx.prompts.review(ctx.task, answer, rationale.text)) for r in reviewers)
        )
        for reviewer, review in zip(reviewers, verdicts, strict=True):
            score = parse_review_score(review.text) if review.usable else None  # a cut-off verdict is no verdict
            entry = review.entry()
            record["reviews"][reviewer.name] = {"score": score, "reply": entry.pop("text"), **entry}
            replies.append(review)
    mean, peers_accept = accept([r["score"] for r in record["reviews"].values()], ctx.threshold)
    record |= {"mean_score": mean, "accepted": rationale.usable and qualifies(ctx.filter, gold, peers_accept)}
    return record, replies


async def process(ctx: Context, answer: StudentAnswer) -> dict[str, Any]:
    names = list(ctx.teachers)
    authors = [(n, k) for n in names for k in range(1, ctx.samples + 1)]  # each teacher's samples, in order
    feedback_jobs = [ask(ctx, ctx.teachers[n], ctx.prompts.feedback(ctx.task, answer)) for n in names]
    rationale_jobs = [rationale_with_reviews(ctx, answer, ctx.teachers[n], k) for n, k in authors]
    results = await gather_all(*feedback_jobs, *rationale_jobs)
    feedbacks, rationales = results[: len(names)], results[len(names) :]
    usage: dict[str, dict[str, Any]] = {n: dict.fromkeys(USAGE_FIELDS, 0) | {"cost": 0.0} for n in names}

    def charge(name: str, reply: Reply) -> None:  # every reply the provider billed, cut off or refused too
        for key in USAGE_FIELDS:
            usage[name][key] += getattr(reply.usage, key)
        usage[name]["cost"] += ctx.teachers[name].cost(reply.usage, reply.batch)

    for name, feedback in zip(names, feedbacks, strict=True):
        charge(name, feedback)
    for (name, _), (record, replies) in zip(authors, rationales, strict=True):
        charge(name, replies[0])
        for reviewer, reply in zip(record["reviews"], replies[1:], strict=True):
            charge(reviewer, reply)
    return {
        "id": answer.id,
        "mistake": answer.to_json(),
        "feedback": {n: f.entry() for n, f in zip(names, feedbacks, strict=True)},
        "rationales": {sample_key(n, k): r for (n, k), (r, _) in zip(authors, rationales, strict=True)},
        "usage": usage,
        "prompts": prompts_label(ctx.prompts_name),
        "threshold": ctx.threshold,
        "filter": ctx.filter,
        "samples": ctx.samples,
        "temperatures": {n: ctx.teachers[n].temperature for n in names},
    }
