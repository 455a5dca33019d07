"""The dataset card of `fair export` (gen/export.py): README.md with the hub's YAML header.

The header names both shapes' files (`configs`, so that `load_dataset(REPO, "messages")` finds them), the
licence, task category, language and size category. The text says where the data came from (task and split,
student, teachers and their models, the prompts' version, the filter and its threshold), what it holds (counts
by teacher and kind, and why mistakes were left out of the messages), what it cost, and the decontamination
figures where the run recorded any. Every figure is counted from the records as they are exported, except the
folder's spending over all its runs (committee_stats.json) and the teachers' models, read from the committee
file the run named (as it is at export time: a teacher's model changed since is not seen).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fair.errors import FairError
from fair.examples import BuildReport
from fair.recipes import filter_rule
from fair.records import usable_text
from fair.tasks import Task
from gen.teachers.config import load_committee

SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))


@dataclass
class CardFacts:
    task: Task
    teachers: list[str]
    folder: Path  # the committee run folder
    location: str  # where `load_dataset` finds the export: the hub repository, else the folder
    license: str
    teacher: str  # the messages' selection, as `fair train --teacher ... --seed ...`
    seed: int
    committee: dict[str, Any]  # committee.yaml: the settings the run was made with ({} when absent)
    stats: dict[str, Any]  # committee_stats.json ({} when absent)
    report: BuildReport  # the messages shape's examples
    records: int = 0
    messages: int = 0
    billed: int = 0  # records that carry their usage (an imported one does not)
    splits: Counter[str] = field(default_factory=Counter)
    prompts: Counter[str] = field(default_factory=Counter)
    thresholds: Counter[float] = field(default_factory=Counter)
    per_teacher: dict[str, Counter[str]] = field(default_factory=dict)  # teacher -> what it wrote and cost

    def add(self, record: dict) -> None:
        self.records += 1
        self.splits[record["mistake"]["split"]] += 1
        self.prompts[record.get("prompts") or "unrecorded"] += 1
        self.thresholds[record.get("threshold")] += 1
        for name, entry in record["feedback"].items():
            self.tally(name)["feedback"] += usable_text(entry) is not None
        for name, entry in record["rationales"].items():
            counts = self.tally(name)
            counts["rationales"] += usable_text(entry) is not None
            counts["accepted"] += bool(entry.get("accepted"))
            for review in (entry.get("reviews") or {}).values():
                if review.get("score") is not None:
                    counts["score_sum"] += review["score"]
                    counts["scores"] += 1
        self.billed += bool(record.get("usage"))
        for name, usage in (record.get("usage") or {}).items():
            self.tally(name).update({k: usage.get(k) or 0 for k in ("input_tokens", "output_tokens", "cost")})

    def tally(self, name: str) -> Counter[str]:
        return self.per_teacher.setdefault(name, Counter())


def size_category(n: int) -> str:
    return next((label for bound, label in SIZES if n < bound), "n>100M")


def header(facts: CardFacts) -> str:
    files = [{"config_name": shape, "data_files": [{"split": "train", "path": f"{shape}/train-*.parquet"}]}
             for shape in ("messages", "records")]
    files[0]["default"] = True
    meta = {"license": facts.license, "task_categories": ["text-generation"], "language": ["en"],
            "tags": ["fair-distill", "distillation", "synthetic", facts.task.name],
            "size_categories": [size_category(facts.records)], "configs": files}
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n"


def models(facts: CardFacts) -> dict[str, str]:
    """Each teacher's provider and model, from the committee file the run named, if it can still be read."""
    try:
        return {t.name: f"{t.model} ({t.provider})" for t in load_committee(str(facts.committee["teachers"]))}
    except (FairError, KeyError):
        return {}


def provenance(facts: CardFacts) -> list[str]:
    c = facts.committee
    known = models(facts)
    teachers = ", ".join(f"`{n}` {known.get(n, '(model not recorded)')}" for n in facts.teachers)
    threshold = ", ".join(str(t) for t in facts.thresholds if t is not None) or c.get("threshold", "(not recorded)")
    return [
        "| | |", "| --- | --- |",
        f"| source | task `{facts.task.name}` (`{facts.task.hub_id}`), split {', '.join(facts.splits)} |",
        f"| student | `{c.get('student', 'not recorded')}` (whose mistakes these are) |",
        f"| teachers | {teachers} (committee `{c.get('teachers', 'not recorded')}`) |",
        f"| prompts | {', '.join(facts.prompts)} |",
        f"| filter | {filter_rule(facts.report.filter, threshold)} |",
        f"| messages | `fair train --teacher {facts.teacher} --seed {facts.seed}`'s examples, chat prompts |",
    ]


def counts(facts: CardFacts) -> list[str]:
    r = facts.report
    lines = [f"{facts.records} records (mistakes); {r.mistakes - sum(r.skipped.values())} give training examples: "
             f"{r.feedback_examples} feedback + {r.rationale_examples} rationale = {facts.messages} messages rows.",
             *(f"- left out of messages: {n} ({reason})" for reason, n in r.skipped.items()), "",
             "| teacher | feedback | rationales | accepted | mean review score | tokens in | tokens out | cost $ |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in facts.teachers:
        t = facts.tally(name)
        mean = f"{t['score_sum'] / t['scores']:.2f}" if t["scores"] else "-"
        lines.append(f"| {name} | {t['feedback']} | {t['rationales']} | {t['accepted']} | {mean} | "
                     f"{t['input_tokens']} | {t['output_tokens']} | {t['cost']:.4f} |")
    used = ", ".join(f"{n} {c['feedback']}+{c['rationale']}" for n, c in r.per_teacher.items())
    lines += ["", "(feedback and rationales: whole replies, neither failed, refused nor cut off; the messages rows "
              f"take feedback+rationale examples from {used})"]
    return lines


def cost(facts: CardFacts) -> list[str]:
    total = sum(t["cost"] for t in facts.per_teacher.values())
    unknown = facts.records - facts.billed
    lines = [f"The teachers billed ${total:.4f} for these records (every reply, at each teacher's prices)"
             + (f"; {unknown} record(s) carry no usage (imported from the paper's files, or written before usage "
                "was recorded): their cost is not known." if unknown else ".")]
    if budget := facts.stats.get("budget"):
        lines.append(f"The run folder's cache has spent ${budget['spent_usd']:.4f} over all its runs "
                     f"(committee_stats.json; cap {budget['max_cost_usd'] or 'none'}).")
    return lines


def decontamination(facts: CardFacts) -> list[str]:
    """The figures the run recorded, as they are: committee_stats.json's, else decontamination.json's."""
    path = facts.folder / "decontamination.json"
    figures = facts.stats.get("decontamination")
    if figures is None and path.exists():
        figures = yaml.safe_load(path.read_text())
    if figures is None:
        return ["None recorded in the run folder (committee_stats.json, decontamination.json)."]
    return ["```yaml", yaml.safe_dump(figures, sort_keys=False).rstrip(), "```"]


def dataset_card(facts: CardFacts) -> str:
    student = facts.committee.get("student", "a student")
    sections = [
        f"# FAIR committee data: {facts.task.name}, mistakes of {Path(str(student)).name}", "",
        "Feedback and step-by-step rationales a committee of teacher LLMs wrote for a student's wrong answers, "
        "each rationale reviewed by the other teachers; exported by fair-distill's `fair export`.", "",
        "## Shapes", "",
        "- `messages` (default): one chat per training example, `[{role: user}, {role: assistant}]`, with its "
        "mistake `id`, `kind` (feedback or rationale) and `teacher`: what TRL's `SFTTrainer` and axolotl read "
        "as it is.",
        "- `records`: every record whole: the `mistake`, each teacher's `feedback`, `rationales` with their "
        "`reviews` (scores), `mean_score` and `accepted`, and each teacher's `usage`.", "",
        "```python", "from datasets import load_dataset",
        f'chats = load_dataset("{facts.location}", "messages", split="train")',
        "```", "",
        "## Provenance", "", *provenance(facts), "", "## Counts", "", *counts(facts), "",
        "## Cost", "", *cost(facts), "", "## Decontamination", "", *decontamination(facts), "",
        "## Licence", "",
        f"`{facts.license}`. The texts are the teachers' outputs (their providers' terms apply) about "
        f"the questions of {facts.task.hub_id} (its own licence applies).", "",
    ]
    return header(facts) + "\n" + "\n".join(sections)
