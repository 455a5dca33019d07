"""One budget for everything a `fair serve` process sends: fair turns at the teachers' shared gates.

Every job, batch and proxied chat request of the server runs in one event loop, so their TeacherClients already
share gen/teachers/client.py's gates (one per teacher key and model): together they stay within each key's RPM and TPM
over every 60 s window, and a 429 cools the key down for all of them. What the gates alone would not give is a
fair order: first come, first served lets a job with a wide window take most of a key. So each gate gets a
FairQueue, and a request takes the gate's next concurrency slot and its next place in the limits only when its
tenant's turn comes:

  * Tenants (a job, a batch, the interactive proxy) take turns by stride scheduling: each turn advances the
    tenant's pass by 1 / weight, and the waiting tenant with the lowest pass goes next, so concurrent jobs
    share a key in proportion to their priority. A tenant that was idle starts at the queue's current pass
    (it cannot bank turns while it had nothing to send). Weights are clamped to PRIORITY (a job's priority is
    refused outside it), so every pass stays finite; a tenant whose job or batch ended is closed and leaves
    every queue, so a turn costs the same after 100k finished jobs as after none.
  * Interactive requests (POST /v1/chat/completions) go before any job's, and a `reserve` fraction of each key's
    rpm and tpm is theirs: a job or batch request waits while the key's last 60 s already hold (1 - reserve) x
    rpm requests, or while less than reserve x tpm of its token bucket is free.
  * One request holds a gate's turn at a time, from its turn until it has its slot and its place in the request
    limits; then the next is chosen. It waits for its tokens after its turn (gen/teachers/client.py), so a large
    request waiting up to a minute for them stalls no other tenant of the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gen.teachers.gates import WINDOW_S, Gate

PRIORITY = (0.01, 100.0)  # a tenant's weight: the least and most a job's priority may be


@dataclass(eq=False)
class Tenant:
    """One job, batch or the proxy: an Admission (gen/teachers/client.py) that takes its turns in `budget`'s queues."""

    budget: Budget
    name: str
    weight: float = 1.0
    interactive: bool = False
    turns: int = 0  # turns taken over every gate: the share it got

    def turn(self, gate: Gate) -> contextlib.AbstractAsyncContextManager[None]:
        return self.budget.queue(gate).turn(self)

    def close(self) -> None:
        """Its job or batch ended: out of every queue (a turn it still waits for comes back in at the current pass)."""
        for queue in self.budget.queues.values():
            queue.forget(self)


@dataclass(eq=False)
class FairQueue:
    gate: Gate
    reserve: float  # of the gate's rpm kept for interactive requests
    busy: bool = False
    waiting: dict[Tenant, deque[asyncio.Future]] = field(default_factory=dict)
    passes: dict[Tenant, float] = field(default_factory=dict)
    now_pass: float = 0.0  # the pass of the latest turn: where an idle tenant comes back in
    timer: asyncio.TimerHandle | None = None

    @contextlib.asynccontextmanager
    async def turn(self, tenant: Tenant) -> AsyncIterator[None]:
        waiter = asyncio.get_running_loop().create_future()
        if not self.waiting.get(tenant):
            self.passes[tenant] = max(self.passes.get(tenant, 0.0), self.now_pass)
        self.waiting.setdefault(tenant, deque()).append(waiter)
        self._grant()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted, then cancelled before it could run
                self._release()
            else:
                with contextlib.suppress(KeyError, ValueError):  # _next may have dropped it already
                    self.waiting[tenant].remove(waiter)
                    self._drop_idle(tenant)
            raise
        try:
            yield
        finally:
            self._release()

    def forget(self, tenant: Tenant) -> None:
        if not self.waiting.get(tenant):
            self.passes.pop(tenant, None)
            self.waiting.pop(tenant, None)

    def _drop_idle(self, tenant: Tenant) -> None:
        """No waiter left: its deque goes (its pass stays, so an idle tenant cannot bank turns)."""
        if not self.waiting.get(tenant):
            self.waiting.pop(tenant, None)

    def _release(self) -> None:
        self.busy = False
        self._grant()

    def _grant(self) -> None:
        if self.busy:
            return
        tenant = self._next()
        if tenant is None:
            return
        waiter = self.waiting[tenant].popleft()
        self._drop_idle(tenant)
        self.busy = True
        self.now_pass = self.passes.setdefault(tenant, self.now_pass)
        self.passes[tenant] += 1 / tenant.weight
        tenant.turns += 1
        waiter.set_result(None)

    def _next(self) -> Tenant | None:
        """The interactive tenant when it waits, else the job with the lowest pass while the reserve allows."""
        for tenant, queue in list(self.waiting.items()):
            while queue and queue[0].cancelled():
                queue.popleft()
            self._drop_idle(tenant)
        ready = list(self.waiting)
        if not ready:
            return None
        if interactive := [t for t in ready if t.interactive]:
            return interactive[0]
        if (wait := self._reserve_wait()) > 0:
            if self.timer is None:
                self.timer = asyncio.get_running_loop().call_later(wait, self._wake)
            return None
        return min(ready, key=lambda t: self.passes.setdefault(t, self.now_pass))

    def _reserve_wait(self) -> float:
        """Seconds until a job may take the gate's next place under the reserve; 0 when it may now."""
        if self.reserve <= 0:
            return 0.0
        now = asyncio.get_running_loop().time()
        recent = [t for t in self.gate.sent if t > now - WINDOW_S]
        cap = max(1, math.floor(self.gate.rpm * (1 - self.reserve)))
        requests = 0.0 if len(recent) < cap else recent[len(recent) - cap] + WINDOW_S - now
        return max(requests, self._tokens_wait())

    def _tokens_wait(self) -> float:
        """Seconds until reserve x tpm of the gate's token bucket is free; 0 when it is now. The bucket drains at
        tpm a minute (aiolimiter's leaky bucket; its level is read after has_capacity has drained it to now)."""
        tokens = self.gate.tokens
        keep = self.reserve * tokens.max_rate
        if tokens.has_capacity(keep):
            return 0.0
        return (tokens._level + keep - tokens.max_rate) / tokens.max_rate * tokens.time_period

    def _wake(self) -> None:
        self.timer = None
        self._grant()


class Budget:
    """The server's queues, one per gate, created on first use (gates are gen/teachers/client.py's, per event loop)."""

    def __init__(self, reserve: float = 0.0):
        self.reserve = reserve
        self.queues: dict[int, FairQueue] = {}  # by id(gate): gates live as long as their event loop

    def tenant(self, name: str, weight: float = 1.0, interactive: bool = False) -> Tenant:
        """`weight` clamped to PRIORITY: a job of an older server's row may hold any positive number."""
        return Tenant(self, name, min(max(weight, PRIORITY[0]), PRIORITY[1]), interactive)

    def queue(self, gate: Gate) -> FairQueue:
        if (queue := self.queues.get(id(gate))) is None:
            queue = self.queues[id(gate)] = FairQueue(gate, self.reserve)
        return queue
