"""The server's state folder: one SQLite file (WAL) of files, batches and jobs, and a folder per object.

    STATE/serve.sqlite          objects(id, kind, created, doc): each file, batch and job as its JSON document
    STATE/token                 the bearer token when FAIR_SERVE_TOKEN is unset (mode 0600)
    STATE/files/<file-id>       an uploaded file's bytes; batch output and error files live in their batch's folder
    STATE/batches/<batch-id>/   output.jsonl, errors.jsonl, requests.sqlite (the response cache)
    STATE/jobs/<job-id>/        mistakes.jsonl, committee.jsonl, requests.sqlite, committee_stats.json, paper files,
                                committee.index.sqlite (the page's record viewer, serve/records_view.py)
    STATE/proxy/requests.sqlite the chat-completions proxy's response cache

Every file here is 0600 and every folder 0700 (serve/server.py's make_private). Crash safety by order: a file is
written to `<id>.partial`, renamed, then its row committed; a job's or batch's folder is made before its row. So a
kill leaves at most a folder or file without a row, which `sweep()` removes at the next start: no orphans, and a
row always has its bytes. Only what bears one of this server's ids is ever removed: a state folder that holds
anything else (`foreign`: a --state pointed at a folder of the user's) is refused before it is touched. One
server per state folder: `fair serve` holds fair/lock.py's lock on it for its whole life.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from fair.wire.errors import ApiError

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, created REAL NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_by_kind ON objects (kind, created);
"""
PREFIX = {"file": "file-", "batch": "batch_", "job": "job-"}


FOLDERS = {"file": "files", "batch": "batches", "job": "jobs"}
OWN_NAMES = {FOLDERS[kind]: re.compile(re.escape(prefix) + r"[0-9a-f]{24}" + (r"(\.partial)?" if kind == "file" else ""))
             for kind, prefix in PREFIX.items()}  # what a kill may leave in each folder
TOP = {"serve.sqlite", "serve.sqlite-wal", "serve.sqlite-shm", "serve.yaml", "token", "token.tmp", ".fair-serve.lock",
       "proxy", *FOLDERS.values()}


def new_id(kind: str) -> str:
    return f"{PREFIX[kind]}{uuid.uuid4().hex[:24]}"


def foreign(root: Path) -> list[str]:
    """What in a state folder no `fair serve` made (its top level, and files/, batches/ and jobs/)."""
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if p.name not in TOP]
    for folder, names in OWN_NAMES.items():
        if (root / folder).is_dir():
            found += [f"{folder}/{p.name}" for p in (root / folder).iterdir() if not names.fullmatch(p.name)]
    return sorted(found)


class Store:
    """One connection, used from the server's event loop thread only; every change commits at once."""

    def __init__(self, root: Path):
        self.root = root
        for folder in ("files", "batches", "jobs", "proxy"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(root / "serve.sqlite", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # a commit survives a process kill
        self.db.executescript(SCHEMA)

    def folder(self, kind: str, object_id: str) -> Path:
        return self.root / FOLDERS[kind] / object_id

    # -- objects -----------------------------------------------------------------------------------------

    def add(self, kind: str, doc: dict[str, Any]) -> dict[str, Any]:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)",
                (doc["id"], kind, doc.get("created_at", time.time()), orjson.dumps(doc)),
            )
        return doc

    def get(self, kind: str, object_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT doc FROM objects WHERE id = ? AND kind = ?", (object_id, kind)
        ).fetchone()
        return orjson.loads(row[0]) if row else None

    def update(self, kind: str, object_id: str, **changes: Any) -> dict[str, Any]:
        doc = self.get(kind, object_id)
        if doc is None:
            raise KeyError(object_id)
        doc |= changes
        with self.db:
            self.db.execute("UPDATE objects SET doc = ? WHERE id = ?", (orjson.dumps(doc), object_id))
        return doc

    def delete(self, kind: str, object_id: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM objects WHERE id = ? AND kind = ?", (object_id, kind))

    def list(
        self, kind: str, limit: int = 100, after: str | None = None
    ) -> tuple[list[dict[str, Any]], bool]:
        """Newest first, `limit` of them after the object `after` (OpenAI's cursor: an id of `kind` this store
        holds, else a 400); and whether more follow."""
        since = ""
        args: list[Any] = [kind]
        if after is not None:
            row = self.db.execute("SELECT created, id FROM objects WHERE id = ? AND kind = ?", (after, kind)).fetchone()
            if row is None:  # not silently the first page again: a client paging on would loop forever
                raise ApiError(400, f"after: no {kind} {after!r} on this server to page after", "after")
            since = " AND (created < ? OR (created = ? AND id < ?))"
            args += [row[0], row[0], row[1]]
        rows = self.db.execute(
            f"SELECT doc FROM objects WHERE kind = ?{since} ORDER BY created DESC, id DESC LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        return [orjson.loads(r[0]) for r in rows[:limit]], len(rows) > limit

    def ids(self, kind: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM objects WHERE kind = ?", (kind,))}

    # -- start-up ----------------------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Remove what a kill left without a row (see the module docstring); returns what went."""
        removed = []
        for kind, folder in FOLDERS.items():
            known = self.ids(kind)
            for path in (self.root / folder).iterdir():
                if path.name not in known and OWN_NAMES[folder].fullmatch(path.name):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                    removed.append(f"{folder}/{path.name}")
        return removed

    def close(self) -> None:
        self.db.close()
