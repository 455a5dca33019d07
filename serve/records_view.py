"""A committee.jsonl read a page at a time: the page's record viewer, in `fair serve` and in `fair view DIR`.

A run's committee.jsonl may hold a million records and grow while its job runs, so no request reads it whole. A
SQLite index beside it (INDEX_NAME in a job's folder; a temporary folder for `fair view`, which writes nothing into
the run's folder) holds one row per record (its byte offset and length, its id, the text a search looks in) and one
per reply (teacher, kind, score, accepted, refused, truncated, failed). The index is built once and then extended by
what the file gained since: complete lines only, so the line a run is writing waits for its newline (a last line
that parses without one is a finished record, as fair/jsonl.py reads it, and the newline that a repair adds to
it later ends that line, not a line of its own). It is built again when the file was replaced: another inode, a
shorter file, or other bytes at either end of what was indexed (a file truncated and written again in place may
start with the same record). A page is one query of the index and `limit` seeks into the file. Errors name the file
as the caller says (`name`: `fair serve` names a job's file by its job, never by the server's own paths).

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
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Literal, get_args

import orjson

from fair.errors import FairError
from fair.records import committee_replies

INDEX_NAME = "committee.index.sqlite"
MAX_PAGE = 100
EDGE_BYTES = 4096  # the first and the last of the bytes indexed, hashed: a file replaced in place is noticed
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


def index_lock(index_path: Path) -> threading.Lock:
    """The lock a use of this index holds (a build of it, minutes for a million records, holds it throughout)."""
    return LOCKS.setdefault(index_path, threading.Lock())


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


def shape_error(record: Any) -> str | None:
    """What keeps a line from being read as a committee record (every object the index and the page read into),
    or None: `fair view` shows any folder, and a hand-edited or foreign file is one line naming the field."""
    if not isinstance(record, dict) or not all(isinstance(record.get(k), dict) for k in ("feedback", "rationales")):
        return "not a committee record (an object with feedback and rationales)"
    if record.get("mistake") is not None and not isinstance(record["mistake"], dict):
        return "mistake is not an object"
    for key in ("feedback", "rationales"):
        for name, entry in record[key].items():
            if not isinstance(entry, dict):
                return f"{key}.{name} is not an object"
    for name, rationale in record["rationales"].items():
        reviews = rationale.get("reviews", {})
        if not isinstance(reviews, dict):
            return f"rationales.{name}.reviews is not an object"
        for reviewer, review in reviews.items():
            if not isinstance(review, dict):
                return f"rationales.{name}.reviews.{reviewer} is not an object"
    return None


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
    """The index of one committee.jsonl; use as a context manager (one connection per use, any thread). `name`:
    what errors call the file (default: its path)."""

    def __init__(self, path: Path, index_path: Path, name: str | None = None):
        self.path, self.index_path, self.name = path, index_path, name or str(path)
        self.lock = index_lock(index_path)

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
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            if self.meta("inode") is not None:
                self.reset(None)
            return
        with f:
            stat = os.fstat(f.fileno())  # the file opened, not what the path names a moment later
            done = self.meta("bytes", 0)
            if self.meta("inode") != stat.st_ino or stat.st_size < done or (done and self.meta("edges") != edges(f, done)):
                self.reset(stat.st_ino)
                done = 0
            if stat.st_size > done:
                self.extend(f, done)

    def reset(self, inode: int | None) -> None:
        with self.db:
            for table in ("records", "replies", "teachers", "meta"):
                self.db.execute(f"DELETE FROM {table}")  # noqa: S608 (the names above)
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("inode", inode), ("edges", None), ("bytes", 0), ("lines", 0)])

    def extend(self, f, start: int) -> None:
        f.seek(max(0, start - 1))
        # The last line indexed had no newline (a kill before it): what follows it, up to the next newline, is
        # still that line (the newline a repair adds), not a new one.
        same_line = start > 0 and f.read(1) != b"\n"
        offset, line_no, n = start, self.meta("lines", 0), self.count()
        records, replies = [], []
        for line in f:
            if not line.endswith(b"\n") and not parses(line):
                break  # being written: its newline will come
            if same_line:
                same_line = False
            else:
                line_no += 1
            if line.strip():
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise FairError(f"{self.name}:{line_no}: not valid JSON") from None
                if problem := shape_error(record):
                    raise FairError(f"{self.name}:{line_no}: {problem}")
                records.append((n, offset, len(line), str(record.get("id")), search_text(record)))
                replies += reply_rows(n, record)
                n += 1
            offset += len(line)
            if len(records) >= BATCH:
                self.save(records, replies, offset, line_no, edges(f, offset))
                records, replies = [], []
        self.save(records, replies, offset, line_no, edges(f, offset))

    def save(self, records: list, replies: list, offset: int, line_no: int, seen: str) -> None:
        with self.db:
            self.db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?)", records)
            self.db.executemany("INSERT INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?)", replies)
            self.db.executemany("INSERT OR IGNORE INTO teachers VALUES (?)", {(r[1],) for r in replies})
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [("bytes", offset), ("lines", line_no),
                                                                            ("edges", seen)])


def edges(f, done: int) -> str:
    """A hash of the first and the last EDGE_BYTES of the file's first `done` bytes (what the index holds); read
    with pread, so that a file being iterated over keeps its place."""
    k, fd = min(EDGE_BYTES, done), f.fileno()
    return hashlib.sha256(os.pread(fd, k, 0) + b"\0" + os.pread(fd, k, done - k)).hexdigest()


def parses(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def read_at(f, offset: int, length: int) -> dict[str, Any]:
    f.seek(offset)
    return orjson.loads(f.read(length))
