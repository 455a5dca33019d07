"""Gates: the limits shared by every client with the same provider, base_url, API key and model, the unit a
provider limits (gen/teachers/client.py states the policy that its TeacherClient carries out through them).

Limiters and semaphores belong to one event loop, so the gates are kept per loop and die with it; the first
teacher to use a gate sets its limits. `fair serve` shows them (gate_state) and decides whose request takes a
gate's next turn (an Admission, serve/budget.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections import deque
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiolimiter import AsyncLimiter

if TYPE_CHECKING:
    from gen.teachers.config import Teacher
    from gen.teachers.transport import QuotaExhausted

WINDOW_S = 60.5  # the per-minute window, with a margin for requests that arrive later than they left


@dataclass
class Gate:
    rpm: int
    requests: AsyncLimiter
    tokens: AsyncLimiter
    slots: asyncio.Semaphore
    load: int = 0  # attempts waiting for this gate or in flight through it: how keys share the work
    sent: deque = field(default_factory=deque)  # loop.time() of each request sent in the last WINDOW_S
    cooldown_until: float = 0.0  # loop.time() before which nobody sends
    slow_until: float = 0.0  # loop.time() before which the per-minute cap is SLOW_FACTOR * rpm
    token_balance: float = 0.0  # > 0: over-reserved tokens to credit; < 0: usage still to charge
    rate_limited: int = 0  # 429s received through this gate
    out_of_quota: QuotaExhausted | None = None  # the account's answer, repeated without sending until quota_until
    quota_until: float = 0.0


# Limiters and semaphores belong to one event loop, so gates are kept per loop (and die with it).
_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, Gate]] = weakref.WeakKeyDictionary()


def gate_for(teacher: Teacher) -> Gate:
    """The gate of a one-key teacher (one of Teacher.per_key()): the same key and model share one."""
    key = teacher.api_key()
    ident = (teacher.provider, teacher.url, hashlib.sha256(key.encode()).hexdigest()[:16] if key else "",
             teacher.model)
    gates = _GATES.setdefault(asyncio.get_running_loop(), {})
    if ident not in gates:  # the first teacher to use a gate sets its limits
        burst = max(1.0, teacher.rpm / 60)
        gates[ident] = Gate(
            rpm=teacher.rpm,
            requests=AsyncLimiter(burst, burst * 60 / teacher.rpm),
            tokens=AsyncLimiter(teacher.tpm, 60),
            slots=asyncio.Semaphore(teacher.max_concurrency),
        )
    return gates[ident]


def gate_state(teacher: Teacher) -> list[dict[str, Any]]:
    """Each of a teacher's gates as `fair serve` shows it (GET /v1/fair/limits); from inside its event loop."""
    now = asyncio.get_running_loop().time()
    states = []
    for index, view in enumerate(teacher.per_key()):
        gate = gate_for(view)
        states.append({"teacher": teacher.name, "key": index, "model": teacher.model, "rpm": gate.rpm,
                       "tpm": int(gate.tokens.max_rate),
                       "requests_last_minute": sum(1 for t in gate.sent if t > now - WINDOW_S),
                       "cooldown_s": round(max(gate.cooldown_until - now, 0.0), 3),
                       "queue": gate.load, "rate_limited": gate.rate_limited})
    return states


class Admission(Protocol):
    """Who goes next through a gate shared by several jobs (`fair serve`, serve/budget.py). Without one,
    requests take a gate's concurrency slots and limits first come, first served."""

    def turn(self, gate: Gate) -> AbstractAsyncContextManager[None]: ...
