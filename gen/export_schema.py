"""The Parquet side of `fair export` (gen/export.py): the two shapes' schemas, their rows, and the shard writer.

One schema for every export, whatever the committee: a map keyed by teacher in committee.jsonl (feedback,
rationales, reviews, usage) becomes a list of rows that name their teacher, so that every file of every export
reads alike and a viewer shows each reply as a row. The mistake keeps fair/records.py's StudentAnswer fields,
typed from the dataclass itself. A record written before a field existed (`truncated`, `refused`, usage, the
prompts' version) reads as null there.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fair.examples import TrainExample
from fair.records import StudentAnswer
from gen.committee.mistake import USAGE_FIELDS  # a teacher's usage in a record: these and its cost


def arrow_type(hint: Any) -> pa.DataType:
    """A StudentAnswer field's type in Arrow: str, int, bool, optional ones (nullable anyway), tuple[str, ...]."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return arrow_type(args[0])
    if typing.get_origin(hint) is tuple:
        return pa.list_(arrow_type(args[0]))
    return {str: pa.string(), int: pa.int64(), bool: pa.bool_(), float: pa.float64()}[hint]


HINTS = typing.get_type_hints(StudentAnswer)
MISTAKE = pa.struct([(f.name, arrow_type(HINTS[f.name])) for f in dataclasses.fields(StudentAnswer)])
REPLY = [("text", pa.string()), ("error", pa.string()), ("truncated", pa.bool_()), ("refused", pa.string())]
REVIEW = pa.struct([("reviewer", pa.string()), ("score", pa.float64()), ("reply", pa.string()), *REPLY[1:]])
FEEDBACK = pa.struct([("teacher", pa.string()), *REPLY])
RATIONALE = pa.struct([("teacher", pa.string()), *REPLY, ("mean_score", pa.float64()), ("accepted", pa.bool_()),
                       ("reviews", pa.list_(REVIEW))])
USAGE = pa.struct([("teacher", pa.string()), *((k, pa.int64()) for k in USAGE_FIELDS), ("cost", pa.float64())])
RECORDS = pa.schema([("id", pa.string()), ("mistake", MISTAKE), ("feedback", pa.list_(FEEDBACK)),
                     ("rationales", pa.list_(RATIONALE)), ("usage", pa.list_(USAGE)), ("prompts", pa.string()),
                     ("threshold", pa.float64())])
TURN = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.schema([("messages", pa.list_(TURN)), ("id", pa.string()), ("kind", pa.string()),
                      ("teacher", pa.string())])


def fields(entry: dict, names: list[tuple[str, pa.DataType]]) -> dict[str, Any]:
    return {name: entry.get(name) for name, _ in names}


def record_row(record: dict) -> dict[str, Any]:
    """A committee.jsonl record in the records shape."""
    return {
        "id": record["id"], "mistake": record["mistake"],
        "feedback": [{"teacher": n} | fields(e, REPLY) for n, e in record["feedback"].items()],
        "rationales": [{"teacher": n} | fields(e, REPLY) | {
            "mean_score": e.get("mean_score"), "accepted": e.get("accepted"),
            "reviews": [{"reviewer": r, "score": v.get("score"), "reply": v.get("reply"), **fields(v, REPLY[1:])}
                        for r, v in (e.get("reviews") or {}).items()]}
            for n, e in record["rationales"].items()],
        "usage": [{"teacher": n, **{k: u.get(k) for k in (*USAGE_FIELDS, "cost")}}
                  for n, u in (record.get("usage") or {}).items()],
        "prompts": record.get("prompts"), "threshold": record.get("threshold"),
    }


def message_row(example: TrainExample) -> dict[str, Any]:
    """A training example as a chat: the prompt the student sees as the user turn, the teacher's text as its own."""
    return {"messages": [{"role": "user", "content": example.prompt},
                         {"role": "assistant", "content": example.completion}],
            "id": example.mistake_id, "kind": example.kind, "teacher": example.teacher}


class ShardWriter:
    """Rows into `<folder>/<split>-0000k-of-0000n.parquet`, a row group each `group_rows` added rows (the
    rows held in memory), a new file at each next_shard(); a file that gets no rows (a shard whose records
    gave no training example) is written empty, with its schema: the names promise n files."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, shards: int, group_rows: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.split, self.schema, self.shards, self.group_rows = folder, split, schema, shards, group_rows
        self.shard, self.rows, self.pending = 0, 0, []
        self.writer = self.open()

    def open(self) -> pq.ParquetWriter:
        name = f"{self.split}-{self.shard:05d}-of-{self.shards:05d}.parquet"
        return pq.ParquetWriter(self.folder / name, self.schema, compression="zstd")

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.pending += rows
        self.rows += len(rows)
        if len(self.pending) >= self.group_rows:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.Table.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def next_shard(self) -> None:
        self.flush()
        self.writer.close()
        self.shard += 1
        self.writer = self.open()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:  # a failed export's files are left half written in OUT.partial, never renamed
            self.flush()
        self.writer.close()
