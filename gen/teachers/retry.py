"""`Retry`: the one retry policy for every call to a teacher's API (gen/teachers/client.py states it in full).

Failed calls are sent again with exponential backoff and equal jitter; 429s (RateLimited) have their own budget,
2 x max_retries, so that a burst of them cannot use up the retries meant for 5xx and timeouts (curator #205), and
the other retryable failures (TransientError) get max_retries. FatalError, QuotaExhausted included, is never retried.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from gen.teachers.providers import ProviderError, RateLimited, TransientError

T = TypeVar("T")

MAX_COOLDOWN_S = 300.0  # a longer Retry-After (a daily quota) is capped: the retry budget then decides


@dataclass(frozen=True)
class Retry:
    """When a failed call is sent again, and after how long (the module docstring says why). A loop of our own
    rather than tenacity's: two budgets and a wait that reads the error needed custom stop and wait callbacks
    there anyway, and building its AsyncRetrying for each request cost CPU on every call (docs/benchmarks.md)."""

    max_retries: int
    backoff_s: float  # the first retry waits about this long, doubling each time up to backoff_max_s
    backoff_max_s: float = 60.0
    # After a 429, wait at least its retry_after: unless the teacher has other keys, which may take the retry at
    # once (the limited key's gate cools down).
    honour_retry_after: bool = True

    async def run(self, attempt: Callable[[], Awaitable[T]],
                  on_retry: Callable[[ProviderError, int, float], None] | None = None) -> T:
        """attempt() until it returns, raises FatalError, or a budget is spent (then its last error is raised);
        on_retry(error, failures so far, wait) before each retry."""
        rate_limited = others = 0
        while True:
            try:
                return await attempt()
            except (RateLimited, TransientError) as e:
                if isinstance(e, RateLimited):
                    rate_limited += 1
                else:
                    others += 1
                if rate_limited > 2 * self.max_retries or others > self.max_retries:
                    raise
                wait = self.wait(rate_limited + others, e)
                if on_retry is not None:
                    on_retry(e, rate_limited + others, wait)
                await asyncio.sleep(wait)

    def wait(self, failures: int, error: ProviderError) -> float:
        """Exponential with equal jitter; after a 429, at least its retry_after (see honour_retry_after)."""
        step = min(self.backoff_max_s, self.backoff_s * 2 ** (failures - 1))
        wait = step / 2 + random.uniform(0, step / 2)
        if isinstance(error, RateLimited) and error.retry_after is not None and self.honour_retry_after:
            wait = max(wait, min(error.retry_after, MAX_COOLDOWN_S))
        return wait
