"""The durable response cache: one SQLite file of teacher replies, keyed by everything that changes a reply.

A reply is written the moment it arrives, in its own committed transaction, so a killed run loses nothing it
has paid for. SQLite runs in WAL mode with synchronous=NORMAL: every commit survives a process kill (only a
power cut can lose the last few). Requests are recorded as in flight just before they are sent; rows still
there when the cache is next opened were in flight when the previous run died, and may have been sent (and
billed) twice. `abandoned_inflight()` reports how many, so the run can say so instead of hiding it.

The key covers provider, model, every message (system prompt included), temperature, top_p, max_tokens and
the sample salt. It leaves out the base_url (a local server's port changes between runs) and never sees the
API key. Prompt changes reach the key through the messages themselves.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from fair.gen.providers import ChatRequest, ChatResponse

if TYPE_CHECKING:
    from fair.gen.teachers import Teacher

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, teacher TEXT NOT NULL, text TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS inflight (key TEXT PRIMARY KEY, teacher TEXT NOT NULL, started REAL NOT NULL);
"""


def key_for(teacher: Teacher, request: ChatRequest) -> str:
    """sha256 of a canonical JSON of exactly the fields that change the reply (see the module docstring)."""
    fields = {
        "provider": teacher.provider,
        "model": teacher.model,
        "messages": [[role, content] for role, content in request.messages],
        "temperature": float(request.temperature),  # 0 and 0.0 must hash alike
        "top_p": float(request.top_p),
        "max_tokens": int(request.max_tokens),
        "sample": int(request.sample),
    }
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ResponseCache:
    """One connection, used from one event loop's thread; every write commits at once (they are small)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: callers may hand the cache to a thread pool; calls never overlap in one loop.
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")  # another process reading the file waits, not fails
        self.db.executescript(SCHEMA)
        with self.db:
            (self._abandoned,) = self.db.execute("SELECT COUNT(*) FROM inflight").fetchone()
            self.db.execute("DELETE FROM inflight")

    def abandoned_inflight(self) -> int:
        """Requests in flight when the previous run was killed: they may have been sent twice."""
        return self._abandoned

    def get(self, key: str) -> ChatResponse | None:
        row = self.db.execute(
            "SELECT text, input_tokens, output_tokens FROM responses WHERE key = ?", (key,)
        ).fetchone()
        return ChatResponse(*row) if row else None

    def begin(self, key: str, teacher: str) -> None:
        """Record a request as in flight, committed before it is sent."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO inflight VALUES (?, ?, ?)", (key, teacher, time.time()))

    def put(self, key: str, teacher: str, response: ChatResponse) -> None:
        """Store a reply and clear its in-flight row in one committed transaction."""
        self.put_many([(key, teacher, response)])

    def put_many(self, items: list[tuple[str, str, ChatResponse]]) -> None:
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                [(k, t, r.text, r.input_tokens, r.output_tokens, now) for k, t, r in items],
            )
            self.db.executemany("DELETE FROM inflight WHERE key = ?", [(k,) for k, _, _ in items])

    def finish(self, key: str) -> None:
        """A request that failed for good: it is no longer in flight."""
        with self.db:
            self.db.execute("DELETE FROM inflight WHERE key = ?", (key,))

    def inflight(self) -> int:
        (n,) = self.db.execute("SELECT COUNT(*) FROM inflight").fetchone()
        return n

    def __len__(self) -> int:
        (n,) = self.db.execute("SELECT COUNT(*) FROM responses").fetchone()
        return n

    def __contains__(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
