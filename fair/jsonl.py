"""Append-only JSON Lines, the on-disk format of every pipeline stage.

Writers flush and fsync after each batch so that a kill -9 loses at most the batch being written; readers
tolerate (and repair) a torn last line, which is what such a kill leaves behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from fair.errors import FairError


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream records; a malformed line is an error naming file and line, except a torn final line."""
    path = Path(path)
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
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
            yield record


def repair_torn_tail(path: Path) -> None:
    """Drop an unterminated last line so that the next append starts on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


def append_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records durably: one write, then flush and fsync."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = b"".join(orjson.dumps(r) + b"\n" for r in records)
    if not payload:
        return
    repair_torn_tail(path)
    with path.open("ab") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | Path, obj: Any) -> None:
    """Write a whole JSON document atomically (temp file + rename), pretty-printed for people."""
    _write_atomic(Path(path), orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")


def _write_atomic(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
