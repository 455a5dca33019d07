"""Export a committee run as a Hugging Face dataset: `fair export`.

    fair export data/svamp/smollm2-135m --format hf                          # -> data/svamp/smollm2-135m/hf/
    fair export data/svamp/smollm2-135m --format hf --teacher all --out svamp-fair/
    fair export data/svamp/smollm2-135m --format hf --push-to-hub you/svamp-fair   # and upload it, private

Reads a committee run folder: committee.jsonl, and beside it what `fair committee` wrote: committee.yaml (the
settings it ran with), committee_stats.json (its spending and outcomes). Writes a folder that
`datasets.load_dataset(OUT, "messages")` and the hub read, in two shapes (docs/formats.md#export):

    records/train-00000-of-0000N.parquet    every record: the mistake, each teacher's feedback, rationale,
                                             reviews (scores), acceptance and usage; maps keyed by teacher
                                             become lists of rows with a `teacher` field (one schema whatever
                                             the committee)
    messages/train-00000-of-0000N.parquet   one chat row per training example: {"messages": [user, assistant]},
                                             with its id, kind and teacher
    README.md                               the dataset card: its YAML header names both shapes' files

The messages are the examples `fair train --teacher T --seed S` trains on (fair/examples.py builds both, the
records in the same order: by the mistake's index in its split), in the chat prompt format (train's default:
the paper's format is plain text, with no turns to export).

Memory is one row group whatever the corpus, besides 16 bytes and an id a record: a first pass over
committee.jsonl keeps each record's index and byte offset and the set of ids (as a committee run keeps its
finished ids), the second reads the records one at a time in index order and writes Parquet row groups of
`row_group_rows` records, and files of `shard_rows`.

The folder is written as OUT.partial and renamed into place: a killed export leaves no half dataset, and a
finished one is replaced only by a finished one; an existing OUT that is not an earlier export is refused.
"""

from __future__ import annotations

import shutil
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import yaml

from fair.config import Validated, at_least
from fair.errors import FairError
from fair.examples import ExampleBuilder
from fair.jsonl import scan_jsonl
from fair.progress import Progress
from fair.recipes import Filter, recorded_filter, run_filter
from fair.records import check_committee_record, teacher_of
from fair.tasks import Task, get_task
from gen.export_card import CardFacts, dataset_card
from gen.export_schema import MESSAGES, RECORDS, ShardWriter, message_row, record_row

SPLIT = "train"  # the shapes' one split: the committee's data is training data, whatever split it was mined on


@dataclass
class ExportConfig(Validated):
    folder: str  # a committee run folder: committee.jsonl and what `fair committee` wrote beside it
    format: Literal["hf"] = "hf"  # hf: Parquet shards and a dataset card, for `datasets` and the hub
    out: str | None = None  # default <folder>/hf; an earlier export there is replaced
    teacher: str = "mixed"  # the messages shape's texts, as `fair train --teacher`: mixed, all or a teacher
    filter: Filter | None = None  # which rationales qualify, as `fair train --filter`; default: the committee's
    seed: int = 0  # the messages shape's draw (mode mixed), as `fair train --seed`
    license: str = "other"  # the card's license field (a hub licence id): the teachers' and the task's terms apply
    push_to_hub: str | None = None  # upload the folder to this hub dataset repository (owner/name)
    public: bool = False  # with push_to_hub: make a new repository public, or upload to a public one
    shard_rows: int = 50_000  # records per Parquet file (their messages go to the twin file)
    row_group_rows: int = 1_000  # records per Parquet row group: what is held in memory at once
    progress: bool = True  # a progress bar on stderr

    def validate(self) -> None:
        at_least(self, 1, "shard_rows", "row_group_rows")

    @property
    def committee_path(self) -> Path:
        return Path(self.folder) / "committee.jsonl"

    @property
    def out_dir(self) -> Path:
        return Path(self.out or Path(self.folder) / "hf")


# ----------------------------------------------------------------------------------------------------------
# Reading: the records' order, then the records one at a time


@dataclass
class Index:
    offsets: np.ndarray  # of each record in committee.jsonl, in the order of the mistakes' indices
    teachers: list[str]  # every teacher named, in first-seen order (train/data.py's teachers_of)
    task: Task
    filters: set[Filter]  # the filters the records were written under (one, in a run)


def index_records(path: Path, task_name: str | None) -> Index:
    """Each record checked as training checks it (fair/records.py), and its place: (index in split, offset).
    The task is the one the run named (committee.yaml: a name, or a task file's path), else the first record's."""
    if not path.exists():
        raise FairError(f"no committee file {path}: run `fair committee` first, or name the folder that holds it")
    indices, offsets = array("q"), array("q")  # 16 bytes a record
    seen: set[str] = set()
    teachers: dict[str, None] = {}
    filters: set[Filter] = set()
    task = get_task(task_name) if task_name else None
    for i, (offset, record) in enumerate(scan_jsonl(path)):
        where = f"{path} record {i} (id {record.get('id')!r})"
        mistake = check_committee_record(record, where, task)
        if task is None:
            try:
                task = get_task(mistake.task)
            except FairError as e:
                raise FairError(f"{where}: {e}") from None
        if record["id"] in seen:
            raise FairError(f"{where}: duplicate id")
        seen.add(record["id"])
        indices.append(mistake.index)
        offsets.append(offset)
        teachers.update(dict.fromkeys(teacher_of(n) for n in (*record["feedback"], *record["rationales"])))
        filters.add(recorded_filter(record))
    if task is None:
        raise FairError(f"{path}: no records")
    # By index, then the file's order: train/data.py's stable sort by index.
    order = np.lexsort((np.frombuffer(offsets, np.int64), np.frombuffer(indices, np.int64)))
    return Index(np.frombuffer(offsets, np.int64)[order], list(teachers), task, filters)


def records_in_order(path: Path, offsets: np.ndarray) -> Iterator[dict]:
    with path.open("rb") as f:
        for offset in offsets:
            f.seek(int(offset))
            yield orjson.loads(f.readline())


# ----------------------------------------------------------------------------------------------------------
# The export


def export(config: ExportConfig) -> Path:
    """Write the dataset folder (in the one format there is, hf) (and upload it with push_to_hub); its path."""
    check_out(config)
    committee = read_yaml(Path(config.folder) / "committee.yaml")
    index = index_records(config.committee_path, committee.get("task"))
    filter = config.filter or run_filter(index.filters, str(config.committee_path))
    builder = ExampleBuilder(index.task, config.teacher, config.seed, "chat", index.teachers, filter)
    facts = CardFacts(task=index.task, teachers=index.teachers, folder=Path(config.folder),
                      location=config.push_to_hub or str(config.out_dir), license=config.license,
                      teacher=config.teacher, seed=config.seed, committee=committee,
                      stats=read_json(Path(config.folder) / "committee_stats.json"), report=builder.report)
    shards = -(-len(index.offsets) // config.shard_rows)
    target, partial = config.out_dir, config.out_dir.with_name(config.out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # a killed export's leftovers: nothing of it is reused
    records = ShardWriter(partial / "records", SPLIT, RECORDS, shards, config.row_group_rows)
    messages = ShardWriter(partial / "messages", SPLIT, MESSAGES, shards, config.row_group_rows)
    bar = Progress(f"export {index.task.name}", len(index.offsets), unit="records", enabled=config.progress)
    with records, messages, bar:
        for i, record in enumerate(records_in_order(config.committee_path, index.offsets)):
            if i and i % config.shard_rows == 0:
                records.next_shard()
                messages.next_shard()
            facts.add(record)
            records.add([record_row(record)])
            messages.add([message_row(example) for example in builder.add(record)])
            bar.update()
    facts.messages = messages.rows
    (partial / "README.md").write_text(dataset_card(facts))
    replace_folder(partial, target)
    print(f"exported {len(index.offsets)} records and {messages.rows} messages rows ({shards} shard(s) each) "
          f"-> {target}\n{builder.report.summary()}")
    if config.push_to_hub:
        from fair.hub import push_folder

        push_folder(target, config.push_to_hub, "dataset", config.public,
                    f"fair export of {Path(config.folder).resolve().name}: {len(index.offsets)} records")
    return target


def check_out(config: ExportConfig) -> None:
    """An existing OUT is replaced only when it is an earlier export, and never holds the run it exports."""
    out = config.out_dir
    if out.exists() and not ((out / "records").is_dir() and (out / "messages").is_dir()):
        raise FairError(f"{out} exists and is not an earlier export (no records/ and messages/): choose another --out")
    if config.committee_path.resolve().is_relative_to(out.resolve()):
        raise FairError(f"--out {out} holds the committee file it exports: choose another --out")


def replace_folder(partial: Path, target: Path) -> None:
    """The finished export takes the place of an earlier one, which is set aside whole, never half deleted."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def read_yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def read_json(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes()) if path.exists() else {}
