"""`fair serve`'s connections: uvicorn's h11 protocol with a header timeout and a connection cap.

uvicorn alone keeps a connection that never sends a byte forever and accepts until the process runs out of
descriptors, when nothing (/healthz included) is answered any more; httptools, its default parser, takes
headers of any size. So the server runs h11 (serve/server.py) with:

  * HEADER_BYTES: a request's line and headers at most (h11's incomplete-event limit; beyond, a 400 and close);
  * HEADER_TIMEOUT_S: a connection with no complete request line and headers this long after it opened, or
    after its last response, is closed (KEEP_ALIVE_S closes an idle keep-alive one sooner);
  * a connection cap, about half the descriptors the process may open (its soft RLIMIT_NOFILE raised to the
    hard one first) and at most MAX_CONNECTIONS: a new connection over the cap closes the oldest one that is idle
    (no request under way), so a flood of silent sockets cannot keep out a request that is sent. uvicorn's own
    limit_concurrency is not used: it answers 503 to everyone, /healthz included, while the flood lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_BYTES = 64 * 2**10
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_CONNECTIONS = 4096
BACKLOG = 64  # connections the kernel queues before the server accepts them, and asyncio accepts in one turn


class GuardedH11(H11Protocol):
    max_connections: ClassVar[int] = MAX_CONNECTIONS
    opened: ClassVar[dict[GuardedH11, None]]  # this server's open connections, oldest first (guarded_h11())

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.opened[self] = None
        if len(self.opened) > self.max_connections:
            self._close_oldest_idle()
        self.header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.opened.pop(self, None)
        self.header_timer.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.header_timer.cancel()  # the next request's headers have their own HEADER_TIMEOUT_S
        self.header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._header_timeout)

    def idle(self) -> bool:
        """No request under way: its headers not (all) in, nothing being answered."""
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _header_timeout(self) -> None:
        if self.idle():
            self.transport.close()

    def _close_oldest_idle(self) -> None:
        for connection in self.opened:
            if connection is not self and connection.idle():
                connection.transport.close()
                return


def guarded_h11() -> type[GuardedH11]:
    """The protocol class for this process's server: its own registry, its cap from the descriptors it may open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
        soft = max(soft, want)
    # room for the files, the teachers' connections and the accepts of the few loop turns an eviction takes
    cap = max(16, min(MAX_CONNECTIONS, (soft - 4 * BACKLOG) // 2))
    return type("GuardedH11", (GuardedH11,), {"max_connections": cap, "opened": {}})
