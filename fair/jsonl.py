"""Append-only JSON Lines, the on-disk format of every pipeline stage.

Writers flush after each batch so that a kill -9 loses at most the batch being written, and fsync (against a
power cut) after each batch (append_jsonl) or every second (JsonlAppender); readers tolerate (and repair) a
torn last line, which is what such a kill leaves behind. A last line that parses is a finished record
whatever its newline: readers count it, and the repair before the next append keeps it.
"""

from __future__ import annotations

import codecs
import gzip
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from fair.errors import FairError


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream records; a malformed line is an error naming file and line, except a torn final line."""
    for _, record in scan_jsonl(path):
        yield record


def scan_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """read_jsonl's records with the byte offset each line starts at, to read a record again with seek(); a .gz
    file is read through gzip (its offsets are into the decompressed bytes)."""
    path = Path(path)
    offset = 0
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            start, offset = offset, offset + len(line)
            if number == 1 and line.startswith(codecs.BOM_UTF8):  # a user's file saved by Windows tools
                start, line = len(codecs.BOM_UTF8), line[len(codecs.BOM_UTF8):]
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                if not line.endswith(b"\n"):  # the last line, cut short by a kill: the record was never written
                    return
                raise FairError(f"{path}:{number}: not valid JSON ({e})") from None
            if not isinstance(record, dict):
                raise FairError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield start, record


def repair_torn_tail(path: Path, chunk: int = 1 << 16) -> None:
    """End the file on a fresh line before an append. An unterminated last line that parses gets its newline:
    the record was written whole (only its newline was not), and readers count it as done; a torn one, which
    readers skip, is dropped. Reads from the end only: the file may hold millions of records."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        start = _last_line_start(f, end, chunk)
        f.seek(start)
        try:
            orjson.loads(f.read(end - start))
        except orjson.JSONDecodeError:
            f.truncate(start)
            return
        f.seek(end)
        f.write(b"\n")


def _last_line_start(f: BinaryIO, end: int, chunk: int) -> int:
    while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        newline = f.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


class JsonlAppender:
    """An open JSONL file for a long stream of appends. Each write() reaches the operating system at once, so
    a kill -9 loses nothing written; fsync, which only a power cut needs, runs at most every `sync_s` seconds
    (and at close): one per record would cap a fast stage at a few thousand records a second."""

    def __init__(self, path: str | Path, sync_s: float = 1.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self.file = self.path.open("ab")
        self.sync_s = sync_s
        self.synced_at, self.unsynced = time.monotonic(), False

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        self.file.write(b"".join(orjson.dumps(r) + b"\n" for r in records))
        self.file.flush()
        self.unsynced = True
        if time.monotonic() - self.synced_at >= self.sync_s:
            self.sync()

    def sync(self) -> None:
        if self.unsynced:
            os.fsync(self.file.fileno())
        self.synced_at, self.unsynced = time.monotonic(), False

    def close(self) -> None:
        self.sync()
        self.file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unique_ids(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The first record of each id (records without one pass through). Runs are kept apart by fair/lock.py, but a
    file written before that lock, or joined by hand, may hold an id twice; counting it twice would skew every
    total and train on it twice."""
    seen: set[Any] = set()
    for record in records:
        key = record.get("id")
        if key is None or key not in seen:
            seen.add(key)
            yield record


def append_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records durably: one write, then flush and fsync (JsonlAppender for a long stream of them)."""
    records = list(records)
    if records:
        with JsonlAppender(path) as out:
            out.write(records)


def write_json(path: str | Path, obj: Any) -> None:
    """Write a whole JSON document atomically (temp file + rename), pretty-printed for people."""
    _write_atomic(Path(path), orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")


class JsonArrayWriter:
    """write_json's bytes for a JSON array, written one element at a time: an export of a corpus need not hold
    it in memory. Like write_json, it goes to a temp file renamed into place, and only if the `with` ends well."""

    OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.file = self.tmp.open("wb")
        self.count = 0

    def add(self, item: Any) -> None:
        # orjson's indented array: each element indented one level more; strings never hold a raw newline
        text = orjson.dumps(item, option=self.OPTIONS).replace(b"\n", b"\n  ")
        self.file.write((b",\n  " if self.count else b"[\n  ") + text)
        self.count += 1

    def __enter__(self) -> JsonArrayWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.file.write(b"\n]\n" if self.count else b"[]\n")
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink()


def _write_atomic(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
