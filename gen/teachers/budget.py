"""CostBudget: a cap on what a run spends at the teachers' APIs, which no request can take it past.

    cache = ResponseCache(out_dir / "requests.sqlite")                   # its ledger: what the folder has spent
    budget = CostBudget(max_cost_usd, cache.spent_usd, ledger=cache)      # None: no cap, spending still counted
    client = TeacherClient(teacher, cache, http, budget=budget)          # every client of the run shares it
    ...                                                                  # complete() may raise BudgetExhausted

`fair committee --max-cost-usd X` (also `fair gen`, the committee YAML and `make gen/committee MAX_COST=X`) and
the jobs of `fair serve` (their `max_cost_usd`) use this one implementation (gen/committee/run.py builds it).

Per attempt (a retry is an attempt like the first): once the rate-limit gate has admitted it (a request waiting
for its limits holds no money), its worst case is reserved, and the attempt is sent only when
spent + reserved + worst case <= limit. The worst case (`worst_case_usd`) is an upper bound of what the
provider can bill for it:
  * input: every message's UTF-8 bytes, plus TOKENS_PER_MESSAGE for each message and TOKENS_PER_REQUEST for the
    request, all at the full input price. A token is at least one byte for the three providers' tokenizers:
    OpenAI's (tiktoken's o200k/cl100k) and Anthropic's are byte-level BPEs, whose tokens are non-empty byte
    strings; Gemini's SentencePiece vocabulary has no empty piece, falls back to one token per byte, and adds
    one dummy-prefix token per text, which the per-message allowance covers, as it covers the chat formats'
    role and separator tokens (OpenAI documents 3-4 per message, and 3 to prime the reply).
  * output: all of `max_output_tokens` (see there) at the output price.
After the reply, the reservation is settled with the bill: the reply's cost from its usage; a ProviderError's
billed usage if it carries one, else 0 (an error status or a refused connection is not billed), except an
attempt that may have reached the provider with no reply to say what it cost (a timeout, a connection lost after
the body was sent: ProviderError.maybe_billed), which, like an attempt cancelled while in flight, keeps its whole
worst case spent: providers may finish and bill it. Cache hits cost nothing and reserve nothing.

When an attempt cannot fit, it waits for the attempts in flight to settle (their refunds may make room) and
checks again; when nothing is in flight and it still cannot fit, the budget is exhausted for good: that attempt
and every later one raise BudgetExhausted, which is not a teacher's failure (it is a FairError, never a
ProviderError: no record notes it, no retry catches it) but the run's end. So when it is raised nothing is in
flight and nothing paid is lost: the committee writes what finished, cancels the rest (they hold no money) and
says how far it got (gen/committee/run.py); a serve job ends `stopped`. The replies of unfinished mistakes are
in the cache, free for the rerun; but a wide window spreads a budget that is small against the corpus over many
mistakes at once, so a stop may find few finished: a small --window finishes them nearly in order.

Across runs the budget caps everything spent through one response cache: by default the output folder's
requests.sqlite, so a rerun with a higher budget spends only the difference, and one with the same budget stops
at once (having sent at most what still fits). The ledger (table `spending` of the cache, gen/teachers/cache.py)
holds spent + reserved: with a limit, a reservation is committed before its attempt is sent, so what a killed
run had in flight counts at its worst case; settles lower it with the next group commit. A cache written before
the ledger existed starts at 0.

The Batch API (gen/teachers/batch.py) is not budgeted: a batch bills everything it was submitted with, up to
24 hours later, and cannot be stopped at a budget half-way, so a budgeted run refuses batch_api
(CommitteeConfig.validate). Run the Batch API uncapped (`fair estimate` prices it first), or cap a live run.
What a batch's replies cost is still charged to the ledger as they are collected (`charge`), so a later capped
run on the same folder counts it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fair.errors import FairError
from gen.teachers.config import Usage

if TYPE_CHECKING:
    from gen.teachers.config import Teacher
    from gen.teachers.transport import ChatRequest

log = logging.getLogger("gen.teachers.budget")

TOKENS_PER_MESSAGE = 16  # role and separator tokens of a chat format, and SentencePiece's dummy prefix
TOKENS_PER_REQUEST = 16  # the tokens that prime the reply


class BudgetExhausted(FairError):
    """The next attempt cannot fit in what is left of the budget, and nothing is in flight to free any."""

    def __init__(self, spent_usd: float, limit_usd: float, worst_case_usd: float):
        super().__init__(f"budget reached: spent ${spent_usd:.4f} of ${limit_usd:.4f}; the next request may cost "
                         f"up to ${worst_case_usd:.4f}")
        self.spent_usd, self.limit_usd, self.worst_case_usd = spent_usd, limit_usd, worst_case_usd


class Ledger(Protocol):
    """Where a budget's spending outlives the run (gen/teachers/cache.py's ResponseCache)."""

    async def save_spent(self, usd: float) -> None:
        """Record the folder's spending; returns once that is committed."""

    def note_spent(self, usd: float) -> None:
        """Record the folder's spending with the next group commit."""


def worst_case_usd(teacher: Teacher, request: ChatRequest) -> float:
    """An upper bound of what one attempt of `request` can cost (the module docstring says why it holds): every
    input token at the dearer of the input and cache-write prices (an Anthropic cache write is 1.25x), and all the
    output one reply can bill (max_tokens and a Gemini thinking budget: Teacher.max_output_tokens)."""
    input_tokens = TOKENS_PER_REQUEST + sum(len(content.encode()) + TOKENS_PER_MESSAGE
                                            for _, content in request.messages)
    written = teacher.price_cache_write is not None and teacher.price_cache_write > teacher.price_input
    return teacher.cost(Usage(input_tokens, teacher.max_output_tokens(request.max_tokens),
                              cache_write_tokens=input_tokens if written else 0))


@dataclass
class Reservation:
    usd: float  # the attempt's worst case, held until settled
    settled: bool = False


class CostBudget:
    """One run's (one job's) budget, shared by all its TeacherClients, in one event loop."""

    def __init__(self, limit_usd: float | None, spent_before_usd: float = 0.0, ledger: Ledger | None = None):
        self.limit_usd = limit_usd  # None: no cap; spending is still counted and kept in the ledger
        self.spent_before_usd = spent_before_usd  # by earlier runs on the same ledger (a kill's in-flight at worst)
        self.ledger = ledger
        self.spent_usd = 0.0  # settled this run
        self.reserved_usd = 0.0
        self.in_flight = 0  # reservations not yet settled
        self.exhausted: BudgetExhausted | None = None
        self.halted = False  # the run is stopping (a teacher out of quota): no attempt is sent any more
        self._settled = asyncio.Event()  # set (and replaced) at each settle: wakes the attempts waiting for room

    @property
    def total_usd(self) -> float:
        """What the ledger holds: spent before, spent, and reserved (an upper bound of the real spending)."""
        return self.spent_before_usd + self.spent_usd + self.reserved_usd

    def fits(self, worst_case_usd: float) -> bool:
        # A hair of tolerance: a sum of float costs must not refuse what exactly fits.
        return self.limit_usd is None or self.total_usd + worst_case_usd <= self.limit_usd * (1 + 1e-12)

    def check(self) -> None:
        """Raise BudgetExhausted if the budget has stopped the run."""
        if (e := self.exhausted) is not None:  # a new one each time: one raised by many tasks grows its traceback
            raise BudgetExhausted(e.spent_usd, e.limit_usd, e.worst_case_usd)

    async def reserve(self, worst_case_usd: float) -> Reservation:
        """Hold `worst_case_usd` before an attempt is sent; wait for room, or raise BudgetExhausted. Once halted,
        it never returns: the attempt holds no money and waits to be cancelled with the run."""
        if self.halted:
            await asyncio.get_running_loop().create_future()
        while not (self.exhausted is None and self.fits(worst_case_usd)):
            if self.exhausted is None and self.in_flight == 0:
                self.exhausted = BudgetExhausted(self.total_usd, self.limit_usd, worst_case_usd)
                log.info("%s", self.exhausted)
            self.check()
            await self._settled.wait()
        reservation = Reservation(worst_case_usd)
        self.reserved_usd += worst_case_usd
        self.in_flight += 1
        if self.ledger is not None and self.limit_usd is not None:
            try:  # committed before the send: a kill from here on still counts this attempt
                await self.ledger.save_spent(self.total_usd)
            except BaseException:
                self.settle(reservation, 0.0)  # not sent
                raise
        return reservation

    def halt(self) -> None:
        """Send nothing more: the run is about to stop (a teacher out of quota); see `drained`."""
        self.halted = True

    async def drained(self) -> None:
        """Return once no attempt is in flight: each one's reply is paid for, so it lands in the cache before a
        halted run cancels what is left (which then holds no money and was never sent)."""
        while self.in_flight:
            await self._settled.wait()

    def charge(self, usd: float) -> None:
        """Count what was billed without a reservation (a Batch API reply, collected after the fact), so the
        ledger holds everything spent through its cache."""
        self.spent_usd += usd
        if self.ledger is not None:
            self.ledger.note_spent(self.total_usd)

    def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """The attempt is over and billed `actual_usd`: its reservation gives way to that."""
        if reservation.settled:
            return
        reservation.settled = True
        if actual_usd > reservation.usd * (1 + 1e-9):
            log.warning("a reply billed $%.6f, above its reserved worst case $%.6f: the bound in "
                        "gen/teachers/budget.py is wrong for this provider", actual_usd, reservation.usd)
        self.reserved_usd = max(self.reserved_usd - reservation.usd, 0.0) if self.in_flight > 1 else 0.0
        self.in_flight -= 1
        self.spent_usd += actual_usd
        if self.ledger is not None:
            self.ledger.note_spent(self.total_usd)
        self._settled.set()  # every attempt waiting for room looks again (in_flight 0: they all stop)
        self._settled = asyncio.Event()
