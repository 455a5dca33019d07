"""`fair import-mistakes` and `fair import-committee`: the paper's published files as our own run's files.

    fair import-mistakes --task svamp ../shared/data/seed/Llama-2-7b-chat-hf_svamp_false_round0.json
    fair import-committee --task svamp --out data/svamp/paper/committee.jsonl \
        --feedback ../shared/data/seed/Llama-2-7b-chat-hf_svamp_feedback_round0.json \
        --rationale ../shared/data/seed/Llama-2-7b-chat-hf_svamp_rationale_round0.json

Each record is matched to its benchmark example and re-graded with our grader (fair/paper.py): a "mistake" our
grader judges correct is dropped and counted. Neither command writes over an earlier import: the output is
written once, whole, and a second import of the same file names the file to remove.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fair.config import Validated
from fair.errors import FairError
from fair.jsonl import append_jsonl
from fair.models import model_short_name
from fair.paper import import_committee, import_mistakes
from fair.student import run_dir
from fair.tasks import get_task


@dataclass
class ImportMistakesConfig(Validated):
    file: str  # the paper's mistake file, <student>_<task>_false_round0.json (a JSON array)
    task: str  # the benchmark the file answers (`fair tasks` lists them)
    split: str = "train"  # the split its questions come from
    data_dir: str | None = None  # benchmark data; default $FAIR_DATA_DIR or ../shared/data
    out: str | None = None  # output folder; default data/<task>/<student named by the file>

    def validate(self) -> None:
        get_task(self.task)


@dataclass
class ImportCommitteeConfig(Validated):
    task: str  # the benchmark the files answer (`fair tasks` lists them)
    feedback: str  # the paper's <student>_<task>_feedback_round0.json
    rationale: str  # the paper's <student>_<task>_rationale_round0.json
    out: str  # the committee.jsonl to write
    split: str = "train"  # the split its questions come from
    data_dir: str | None = None  # benchmark data; default $FAIR_DATA_DIR or ../shared/data

    def validate(self) -> None:
        get_task(self.task)


def fresh(path: Path) -> Path:
    if path.exists():
        raise FairError(f"{path} exists: pass another --out, or remove it to import again")
    return path


def import_mistakes_file(config: ImportMistakesConfig) -> Path:
    task = get_task(config.task)
    answers = import_mistakes(task, config.file, task.load(config.split, config.data_dir))
    kept = [a for a in answers if a.is_mistake]
    student = model_short_name(config.file).split(f"_{config.task}", 1)[0].split("_", 1)[0]
    path = fresh(Path(config.out or run_dir(task.name, student)) / "mistakes.jsonl")
    append_jsonl(path, (a.to_json() for a in kept))
    print(f"imported {len(answers)} records from {config.file}: {len(kept)} mistakes written to {path}; "
          f"{len(answers) - len(kept)} dropped because our grader judges them correct")
    return path


def import_committee_file(config: ImportCommitteeConfig) -> Path:
    task = get_task(config.task)
    examples = task.load(config.split, config.data_dir)
    records = import_committee(task, config.feedback, config.rationale, examples)
    path = fresh(Path(config.out))
    append_jsonl(path, records)
    accepted = sum(r["accepted"] for rec in records for r in rec["rationales"].values())
    print(f"imported {len(records)} mistakes with {accepted} accepted rationales into {path}")
    return path
