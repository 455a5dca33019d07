"""A committee.jsonl read a page at a time: the page's record viewer, in `fair serve` and in `fair view DIR`.

A run's committee.jsonl may hold a million records and grow while its job runs, so no request reads it whole. A
SQLite index beside it (INDEX_NAME in a job's folder; a temporary folder for `fair view`, which writes nothing into
the run's folder) holds one row per record (its byte offset and length, its id, the text a search looks in) and one
per reply (teacher, kind, score, accepted, refused, truncated, failed). The index is built once and then extended by
what the file gained since: complete lines only, so the line a run is writing waits for its newline (a last line
that parses without one is a finished record, as fair/jsonl.py reads it). It is built again when the file was
replaced: another inode, a shorter file, or other first bytes. A page is one query of the index and `limit` seeks
into the file.

Filters (all optional, combined with AND; a record matches when one of its replies matches them all):
    teacher    a reply by this teacher (a review's teacher is its reviewer)
    accepted   true: an accepted rationale; false: a rationale not accepted (scored below the threshold, or not
               usable: refused, cut off, failed)
    min_score, max_score   a rationale whose mean review score lies in the range (unreviewed ones have none)
    flag       refused | truncated | failed: a feedback, rationale or review so marked
    q          text (a substring, case-insensitive) in the id, the question, the gold answer, the student's answer
               or any reply
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Any, Literal, get_args

import orjson

from fair.errors import FairError
from fair.records import committee_replies

INDEX_NAME = "committee.index.sqlite"
MAX_PAGE = 100
HEAD_BYTES = 4096  # the first bytes, hashed: a file replaced by one of the same inode and size is noticed
BATCH = 2000  # records per transaction while the index is built
Flag = Literal["refused", "truncated", "failed"]  # the replies' marks, each a column of `replies`
FLAGS = get_args(Flag)
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS records (n INTEGER PRIMARY KEY, offset INTEGER, length INTEGER, id TEXT, text TEXT);
CREATE TABLE IF NOT EXISTS replies (
    n INTEGER, teacher TEXT, kind TEXT, score REAL, accepted INTEGER, refused INTEGER, truncated INTEGER,
    failed INTEGER
);
CREATE INDEX IF NOT EXISTS replies_by_teacher ON replies (teacher, kind, n);
CREATE TABLE IF NOT EXISTS teachers (name TEXT PRIMARY KEY);
CREATE INDEX IF NOT EXISTS replies_by_n ON replies (n);
"""
LOCKS: dict[Path, threading.Lock] = {}  # one builder per index: requests come from a pool of threads


@dataclasses.dataclass(frozen=True)
class Filters:
    teacher: str | None = None
    accepted: bool | None = None
    min_score: float | None = None
    max_score: float | None = None
    flag: Flag | None = None
    q: str | None = None

    def __post_init__(self) -> None:
        if self.flag is not None and self.flag not in FLAGS:  # it names a column: never anything else
            raise FairError(f"flag must be one of {', '.join(FLAGS)}, got {self.flag!r}")

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition on `records` and its arguments (always parameterised)."""
        reply, args = [], []
        if self.teacher:
            reply.append("teacher = ?")
            args.append(self.teacher)
        if self.accepted is not None or self.min_score is not None or self.max_score is not None:
            reply.append("kind = 'rationale'")
        if self.accepted is not None:
            reply.append("accepted = ?")
            args.append(int(self.accepted))
        for bound, op in ((self.min_score, ">="), (self.max_score, "<=")):
            if bound is not None:
                reply.append(f"score {op} ?")
                args.append(bound)
        if self.flag:
            reply.append(f"{self.flag} = 1")  # one of FLAGS (checked above): a column, never the user's text
        conditions = [f"n IN (SELECT n FROM replies WHERE {' AND '.join(reply)})"] if reply else []
        if self.q and self.q.strip():
            conditions.append("instr(text, ?) > 0")
            args.append(self.q.strip().lower())
        return " AND ".join(conditions) or "1", args


def reply_rows(n: int, record: dict[str, Any]) -> list[tuple[Any, ...]]:
    rows = []
    for teacher, kind, entry in committee_replies(record):
        score = entry.get("mean_score") if kind == "rationale" else entry.get("score")
        accepted = int(bool(entry.get("accepted"))) if kind == "rationale" else None
        rows.append((n, teacher, kind, score, accepted, int(entry.get("refused") is not None),
                     int(bool(entry.get("truncated"))), int(bool(entry.get("error")))))
    return rows


def search_text(record: dict[str, Any]) -> str:
    """What a text search looks in, lowercased: the mistake's question, gold and answer, and every reply."""
    mistake = record.get("mistake") or {}
    parts = [record.get("id"), mistake.get("question"), mistake.get("gold"), mistake.get("prediction")]
    for _, kind, entry in committee_replies(record):
        parts.append(entry.get("reply" if kind == "review" else "text"))
    return "\n".join(p for p in parts if isinstance(p, str)).lower()


class RecordIndex:
    """The index of one committee.jsonl; use as a context manager (one connection per use, any thread)."""

    def __init__(self, path: Path, index_path: Path):
        self.path, self.index_path = path, index_path
        self.lock = LOCKS.setdefault(index_path, threading.Lock())

    def __enter__(self) -> RecordIndex:
        self.lock.acquire()
        try:
            self.db = sqlite3.connect(self.index_path)
            self.db.executescript(SCHEMA)
            self.refresh()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "db", None) is not None:
            self.db.close()
            self.db = None
        self.lock.release()

    # -- reading -----------------------------------------------------------------------------------------

    def page(self, filters: Filters, offset: int = 0, limit: int = 20) -> dict[str, Any]:
        """`limit` matching records from the `offset`-th on, with how many match and the teachers seen."""
        limit = max(1, min(limit, MAX_PAGE))
        where, args = filters.where()
        total = self.db.execute(f"SELECT count(*) FROM records WHERE {where}", args).fetchone()[0]  # noqa: S608
        rows = self.db.execute(
            f"SELECT n, offset, length FROM records WHERE {where} ORDER BY n LIMIT ? OFFSET ?",  # noqa: S608
            (*args, limit, max(0, offset)),
        ).fetchall()
        teachers = [r[0] for r in self.db.execute("SELECT name FROM teachers ORDER BY name")]
        data = []
        if rows:
            with self.path.open("rb") as f:
                data = [{"n": n, "record": read_at(f, start, length)} for n, start, length in rows]
        return {"object": "list", "data": data, "total": total, "offset": max(0, offset),
                "has_more": max(0, offset) + len(data) < total, "indexed": self.count(), "teachers": teachers}

    def record(self, n: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT offset, length FROM records WHERE n = ?", (n,)).fetchone()
        if row is None:
            return None
        with self.path.open("rb") as f:
            return read_at(f, *row)

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM records").fetchone()[0]

    # -- building ----------------------------------------------------------------------------------------

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def refresh(self) -> None:
        """Index what the file gained since the last call; from scratch when it is not the file indexed."""
        if not self.path.exists():
            if self.meta("inode") is not None:
                self.reset(None)
            return
        stat = self.path.stat()
        with self.path.open("rb") as f:
            done = self.meta("bytes", 0)
            head = hashlib.sha256(f.read(min(HEAD_BYTES, done))).hexdigest()
            if self.meta("inode") != stat.st_ino or stat.st_size < done or self.meta("head") != head:
                self.reset(stat.st_ino)
                done = 0
            if stat.st_size > done:
                self.extend(f, done)

    def reset(self, inode: int | None) -> None:
        with self.db:
            for table in ("records", "replies", "teachers", "meta"):
                self.db.execute(f"DELETE FROM {table}")  # noqa: S608 (the names above)
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("inode", inode), ("head", hashlib.sha256(b"").hexdigest()), ("bytes", 0), ("lines", 0)])

    def extend(self, f, start: int) -> None:
        f.seek(start)
        offset, line_no, n = start, self.meta("lines", 0), self.count()
        records, replies = [], []
        for line in f:
            if not line.endswith(b"\n") and not parses(line):
                break  # being written: its newline will come
            line_no += 1
            if line.strip():
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise FairError(f"{self.path}:{line_no}: not valid JSON") from None
                if not isinstance(record, dict) or not all(
                        isinstance(record.get(k), dict) for k in ("feedback", "rationales")):
                    raise FairError(f"{self.path}:{line_no}: not a committee record (an object with feedback "
                                    "and rationales)")
                records.append((n, offset, len(line), str(record.get("id")), search_text(record)))
                replies += reply_rows(n, record)
                n += 1
            offset += len(line)
            if len(records) >= BATCH:
                self.save(records, replies, offset, line_no)
                records, replies = [], []
        self.save(records, replies, offset, line_no)
        f.seek(0)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)",
                            (hashlib.sha256(f.read(min(HEAD_BYTES, offset))).hexdigest(),))

    def save(self, records: list, replies: list, offset: int, line_no: int) -> None:
        with self.db:
            self.db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?)", records)
            self.db.executemany("INSERT INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?)", replies)
            self.db.executemany("INSERT OR IGNORE INTO teachers VALUES (?)", {(r[1],) for r in replies})
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [("bytes", offset), ("lines", line_no)])


def parses(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def read_at(f, offset: int, length: int) -> dict[str, Any]:
    f.seek(offset)
    return orjson.loads(f.read(length))
