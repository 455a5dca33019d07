"""The durable response cache: one SQLite file of teacher replies, keyed by everything that changes a reply.

Durability, the promise a rerun relies on: only requests that were in flight at a kill are sent again, and
they are counted. A request is recorded as in flight, committed, before it is sent; its reply replaces that
row in one transaction. Rows still there when the cache is next opened were in flight when the previous run
died (sent, maybe answered, and maybe billed twice); `abandoned_inflight()` reports how many, so the run can
say so instead of hiding it.

Writes are grouped: a commit has a fixed cost however little it holds, and one for each mark and each reply
was most of the cache's cost per request (make bench-scale times it at 1M rows: docs/benchmarks.md).
  * `await mark_inflight()` joins the next group commit, which runs as soon as the event loop is free, with
    every other request about to be sent in this turn of the loop; the caller sends only once it returns.
  * `put()` holds a reply in memory (get() sees it at once) until the next commit: the next group of in-flight
    marks, `flush_s` seconds later at most, `max_pending` replies, or close(). A reply not yet committed at a
    kill still has its committed in-flight row, so it is counted like any request in flight.
SQLite runs in WAL mode with synchronous=NORMAL: every commit survives a process kill (only a power cut can
lose the last few).
A commit that fails (a full disk) refuses the marks it held, so those requests are not sent, and keeps its replies
and the ledger's total pending for the next commit: nothing paid is dropped, and once space returns the cache
works again without a restart.

The key covers provider, endpoint, model, every message (system prompt included), temperature, top_p,
max_tokens and the sample salt. The endpoint is the base URL's host and path, so that a mock's or a proxy's
replies are never reused for the real API under the same model name; on a loopback host it leaves out the
port, which changes between runs (the offline simulator takes a free one each time). The key never sees the
API key (a teacher's several keys share one cache). Prompt changes reach the key through the messages.

A Gemini teacher's thinking_budget is in the key when set (it changes the reply; keys without one are as before).

A reply is stored with everything its cost and use depend on: batch = 1 when answered through the Batch API (its
cost is counted at the batch price wherever it is read), the cached-input and cache-write token counts (their own
prices), truncated, and the refusal reason. Refusals and truncated replies are the provider's answer to that
request and are kept like any other: a rerun does not pay for them again. Cache files written before a column
existed gain it (0, or NULL for the refusal) when opened.

Table `spending` is the ledger of gen/teachers/budget.py: one row, the USD spent (and reserved) through this
file, `spent_usd` when opened; `save_spent` commits a new value like `mark_inflight`, `note_spent` with the next
group commit.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson

from fair.wire.listen import is_loopback
from gen.teachers.providers import ChatRequest, ChatResponse

log = logging.getLogger("gen.teachers.cache")
RETRY_S = 2.0  # after a failed timer commit (a full disk), what it held is tried again this much later

if TYPE_CHECKING:
    from gen.teachers.config import Teacher

# inflight is WITHOUT ROWID: one B-tree rather than a table plus its key index, for the table every request
# writes twice (a third off a one-request commit). Files made before keep their table; it works the same.
SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, teacher TEXT NOT NULL, text TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, created REAL NOT NULL,
    batch INTEGER NOT NULL DEFAULT 0, cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0, truncated INTEGER NOT NULL DEFAULT 0, refusal TEXT
);
CREATE TABLE IF NOT EXISTS inflight (key TEXT PRIMARY KEY, teacher TEXT NOT NULL, started REAL NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS spending (id INTEGER PRIMARY KEY CHECK (id = 0), usd REAL NOT NULL);
"""
# Columns added since the first files: an older file gains them when opened.
ADDED_COLUMNS = {
    "batch": "INTEGER NOT NULL DEFAULT 0", "cached_input_tokens": "INTEGER NOT NULL DEFAULT 0",
    "cache_write_tokens": "INTEGER NOT NULL DEFAULT 0", "truncated": "INTEGER NOT NULL DEFAULT 0", "refusal": "TEXT",
}
COLUMNS = ("text", "input_tokens", "output_tokens", "batch", "cached_input_tokens", "cache_write_tokens", "truncated",
           "refusal")
DEFAULT_PORTS = {"http": 80, "https": 443}


def key_for(teacher: Teacher, request: ChatRequest) -> str:
    """sha256 of a canonical JSON of exactly the fields that change the reply (see the module docstring)."""
    fields = {
        "provider": teacher.provider,
        "endpoint": endpoint(teacher.url),
        "model": teacher.model,
        "messages": [[role, content] for role, content in request.messages],
        "temperature": float(request.temperature),  # 0 and 0.0 must hash alike
        "top_p": float(request.top_p),
        "max_tokens": int(request.max_tokens),
        "sample": int(request.sample),
    }
    if teacher.thinking_budget is not None:
        fields["thinking_budget"] = int(teacher.thinking_budget)
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


@functools.lru_cache(maxsize=256)  # a teacher's base URL, parsed for every request's key otherwise
def endpoint(url: str) -> str:
    """host[:port]/path, as the cache key sees a base URL: a loopback host's port left out (see above)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if is_loopback(host):
        return f"loopback{parts.path.rstrip('/')}"
    port = f":{parts.port}" if parts.port not in (None, DEFAULT_PORTS.get(parts.scheme)) else ""
    return f"{host}{port}{parts.path.rstrip('/')}"


class ResponseCache:
    """One connection, used from one event loop's thread (or from plain code: then every write commits)."""

    def __init__(self, path: str | Path, *, flush_s: float = 0.5, max_pending: int = 1000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_s, self.max_pending = flush_s, max_pending
        # check_same_thread=False: callers may hand the cache to a thread pool; calls never overlap in one loop.
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")  # another process reading the file waits, not fails
        self.db.executescript(SCHEMA)
        present = {row[1] for row in self.db.execute("PRAGMA table_info(responses)")}
        for column, kind in ADDED_COLUMNS.items():
            if column not in present:  # an older file
                self.db.execute(f"ALTER TABLE responses ADD COLUMN {column} {kind}")
        with self.db:
            (self._abandoned,) = self.db.execute("SELECT COUNT(*) FROM inflight").fetchone()
            self.db.execute("DELETE FROM inflight")
        row = self.db.execute("SELECT usd FROM spending").fetchone()
        self.spent_usd = row[0] if row else 0.0  # by every run through this file so far (gen/teachers/budget.py)
        # Not yet committed: in-flight rows to add (and who waits for them), replies, requests given up on.
        self._begins: list[tuple[str, str, float]] = []
        self._waiting: list[asyncio.Future] = []
        self._replies: dict[str, tuple[str, ChatResponse, float]] = {}
        self._finished: list[str] = []
        self._spent: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.commits = 0  # transactions so far: the benchmarks report commits per request

    def abandoned_inflight(self) -> int:
        """Requests in flight when the previous run was killed: they may have been sent twice."""
        return self._abandoned

    def get(self, key: str) -> ChatResponse | None:
        if (pending := self._replies.get(key)) is not None:
            return pending[1]
        row = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        text, input_tokens, output_tokens, batch, cached, written, truncated, refusal = row
        return ChatResponse(text, input_tokens, output_tokens, batch=bool(batch), cached_input_tokens=cached,
                            cache_write_tokens=written, truncated=bool(truncated), refusal=refusal)

    async def mark_inflight(self, key: str, teacher: str) -> None:
        """Record a request as in flight; returns once that is committed, so the caller may send it."""
        self._begins.append((key, teacher, time.time()))
        await self._committed()

    async def save_spent(self, usd: float) -> None:
        """The ledger's new total (gen/teachers/budget.py); returns once that is committed."""
        self._spent = usd
        await self._committed()

    def note_spent(self, usd: float) -> None:
        """The ledger's new total, committed with the next group."""
        self._spent = usd
        self._flush_in(self.flush_s)

    async def _committed(self) -> None:
        """Join the next group commit, which runs as soon as the loop is free, and return once it is done."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._flush_in(0.0)
        await waiter

    def put(self, key: str, teacher: str, response: ChatResponse) -> None:
        """Store a reply; its in-flight row goes in the same transaction (the module docstring says when)."""
        self._replies[key] = (teacher, response, time.time())
        if len(self._replies) >= self.max_pending:
            self.flush()
        else:
            self._flush_in(self.flush_s)

    def finish(self, key: str) -> None:
        """A request that failed for good, or was never sent: it is no longer in flight."""
        self._begins = [begin for begin in self._begins if begin[0] != key]  # a mark not yet committed: never made
        self._finished.append(key)
        self._flush_in(self.flush_s)

    def flush(self) -> None:
        """Commit everything pending in one transaction, then let the waiting requests go."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        begins, waiting, replies, finished = self._begins, self._waiting, self._replies, self._finished
        spent = self._spent
        if not (begins or replies or finished or spent is not None):
            return
        self._begins, self._waiting, self._replies, self._finished, self._spent = [], [], {}, [], None
        try:
            with self.db:
                self.db.executemany(
                    f"INSERT OR REPLACE INTO responses (key, teacher, created, {', '.join(COLUMNS)})"
                    f" VALUES (?, ?, ?{', ?' * len(COLUMNS)})",
                    [(k, t, now, r.text, r.input_tokens, r.output_tokens, int(r.batch), r.cached_input_tokens,
                      r.cache_write_tokens, int(r.truncated), r.refusal) for k, (t, r, now) in replies.items()],
                )
                done = [(k,) for k in (*replies, *finished)]
                self.db.executemany("DELETE FROM inflight WHERE key = ?", done)
                # After the deletes: a second request for a key just answered (both missed the cache) stays marked.
                self.db.executemany("INSERT OR REPLACE INTO inflight VALUES (?, ?, ?)", begins)
                if spent is not None:
                    self.db.execute("INSERT OR REPLACE INTO spending VALUES (0, ?)", (spent,))
            self.commits += 1
        except sqlite3.Error as e:
            self._keep(replies, finished, spent)
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_exception(e)
            raise
        for waiter in waiting:
            if not waiter.done():  # a cancelled request is simply not sent
                waiter.set_result(None)

    def _keep(self, replies: dict[str, tuple[str, ChatResponse, float]], finished: list[str],
              spent: float | None) -> None:
        """A commit failed: what it held stays pending for the next one (newer entries win), except the in-flight
        marks, whose requests are refused with the error and never sent."""
        self._replies = replies | self._replies
        self._finished = finished + self._finished
        if self._spent is None:
            self._spent = spent

    def _flush_in(self, delay: float) -> None:
        """Commit within `delay` seconds: at once outside an event loop, else in a callback of the loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._timer is None or self._timer.when() > loop.time() + delay:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_later(delay, self._flush_from_timer)

    def _flush_from_timer(self) -> None:
        """The timer's commit: a failure (disk full) reaches the requests waiting on it, which stop a committee
        run with it, rather than asyncio's log of a callback's traceback. What it held is kept and tried again
        RETRY_S later and at every later commit, so a long-lived process (the proxy of `fair serve`) works again
        once space returns, and no reply that was paid for is lost meanwhile."""
        try:
            self.flush()
        except sqlite3.Error as e:
            # INFO: the requests waiting on it carry the error (`fair committee` stops with its one line).
            log.info("%s: a commit failed (%s); kept in memory, tried again in %.0f s", self.path.name, e, RETRY_S)
            self._flush_in(RETRY_S)

    def inflight(self) -> int:
        """Requests sent and not yet answered or given up on."""
        self.flush()
        (n,) = self.db.execute("SELECT COUNT(*) FROM inflight").fetchone()
        return n

    def __len__(self) -> int:
        self.flush()
        (n,) = self.db.execute("SELECT COUNT(*) FROM responses").fetchone()
        return n

    def __contains__(self, key: str) -> bool:
        if key in self._replies:
            return True
        return self.db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def close(self) -> None:
        try:
            self.flush()
        finally:  # still full: what was pending is lost with the process, its in-flight rows say so at the next start
            if self._timer is not None:
                self._timer.cancel()
            self.db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
