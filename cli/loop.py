"""`fair loop` / `make loop`: rounds of FAIR. Round r+1 learns from what round r's trained student still gets wrong.

    make loop ROUNDS=3                                   # svamp, the offline committee, 100 train questions
    fair loop --rounds 2 --task svamp --teachers offline --limit 100
    fair loop --config configs/loop.yaml --teachers default --max-cost-usd 20
    fair loop --rounds 2 --train '{teacher: all, epochs: 2}'   # training settings over --train-config's

Round r, in <out>/round<r>/ (default out: data/<task>/<student>-loop/):
    1. gen    `fair gen` (cli/pipeline.py): the round's student answers the train split (its first `limit`
              questions), its mistakes go to the committee, and the paper's files are written beside
              mistakes.jsonl and committee.jsonl as <student>_<task>_{false,feedback,rationale}_round<r>.json
    2. train  `fair train` (train/train.py) from the round's student on the round's committee.jsonl -> train/final
    3. eval   `fair eval` of train/final on the test split -> eval/<task>-<split>/ (and to the trackers
              of training's report_to, `--train '{report_to: [tensorboard]}'`, in the round's runs)
    4. report `fair report`'s page of the round, report.md, compared with the round before
Round 0's student is --student; round r+1's is round r's train/final. The untrained student is evaluated once,
in <out>/eval-start/, the row the first round is compared with. After every round, <out>/loop.md and loop.json
(cli/loop_report.py) give per round: the mistakes mined, the committee's replies and cost, the examples trained,
the test accuracy with its 95% interval, and the change from the round before (paired over the questions).
A round whose student makes no mistake on the questions mined ends the loop: there is nothing left to teach; so
does one whose committee records give training less than one batch of examples (a rerun ends there again).

Training continues from the merged weights. train/final is a plain model folder (LoRA merged into it:
train/checkpoint.py), and round r+1 trains on it as on any student: new adapters (or every weight) with a new
optimizer and schedule. Not the adapter carried on, because that folder is exactly what round r was evaluated
and mined as, the one form every engine (vLLM too) loads; the change over rounds may grow past one adapter's
rank; and a round's data is new, so a warm-up from a fresh optimizer suits it as it suits a first run.

One committee cache for the whole loop, <out>/requests.sqlite: a request an earlier round already paid for (the
same question, the same wrong answer) is not paid for again, and --max-cost-usd caps the whole loop, every round
together (gen/teachers/budget.py).

Resuming: kill it anywhere and rerun the same command. A finished stage is recorded in <out>/stages.json and
skipped; the one that was cut off resumes as it does alone (mining and the committee skip finished ids, training
resumes from its last checkpoint, evaluation answers only what is missing). On a rerun --rounds may grow (the
loop goes on) and so may --max-cost-usd (a run stopped by its budget goes on), as may the other settings in
FREE, which change how the work is done, not what it is; a change to any other setting is refused, by name.
Training's settings (train_config's file, then train) are compared as they resolve with those round 0 trained
with, by `fair train`'s own rule (train/resume.py): an edited file is refused, a tracker added is not.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cli.pipeline import GenConfig, check_teachers, generate, settings_from
from eval.evaluate import EvalConfig, evaluate
from eval.report import build_report, change_line, load_json, percent, wilson
from fair.config import (
    CONFIGS_DIR,
    Validated,
    at_least,
    build_config,
    config_parser,
    load_yaml,
    make_config,
    save_config,
)
from fair.errors import FairError, main_guard
from fair.jsonl import read_jsonl, unique_ids, write_json
from fair.lock import folder_lock
from fair.models import DEFAULT_STUDENT, model_short_name
from fair.records import committee_replies
from fair.rss import release_freed
from fair.student import run_dir
from fair.tasks import get_task
from train.trackers import report_evaluation

# `fair gen`'s settings are the loop's, but for those the loop sets for each round: its student, where it writes,
# the committee cache all rounds share, and the paper's file names (the first student's name, the round's number).
PER_ROUND = ("student", "out", "cache", "paper_student", "paper_round")
FROM_GEN = tuple(f.name for f in dataclasses.fields(GenConfig) if f.name not in PER_ROUND)
# What training takes from the loop, not from train_config or train: set there, they would be silently replaced.
TRAIN_SETS = ("task", "student", "committee", "out", "dtype", "data_dir", "paper_feedback", "paper_rationale")
# Settings that change how the work is done, not what it is: a rerun may change them in a loop's folder.
# (As mining's own check has it, fair/records.py's ANSWER_DEFINING: the engine and its batch size are not in it.)
FREE = ("rounds", "max_cost_usd", "window", "batch_api", "engine", "batch_size", "offline_latency_ms")
TRAINING = ("train_config", "train")  # compared as they resolve, with round 0's train.yaml (the docstring)


@dataclass
@settings_from(GenConfig, FROM_GEN, {"limit": "in every round", "max_cost_usd": "over every round together"})
class LoopConfig(Validated):
    student: str = DEFAULT_STUDENT  # round 0's: the bundled SmolLM2-135M-Instruct, a local folder or a hub id
    rounds: int = 2  # rounds of mine -> committee -> train -> evaluate, each from the round before's trained student
    train_config: str = "demo"  # training settings: a file of configs/train/ by name, or a YAML path (the loop sets task, student, data, out, dtype)
    train: dict[str, Any] = field(default_factory=dict)  # training settings over train_config's, e.g. '{epochs: 2}'
    eval_split: str = "test"  # the split every round's trained student is evaluated on
    eval_limit: int | None = None  # first N questions of eval_split; None for all
    out: str | None = None  # the loop's folder; default data/<task>/<student>-loop

    def validate(self) -> None:
        """The stages' own rules, on the configs the loop will give them: before an hour of mining, not after."""
        at_least(self, 1, "rounds", "eval_limit")
        if self.eval_split not in get_task(self.task).splits:
            raise FairError(f"eval_split: task {self.task!r} has no split {self.eval_split!r} "
                            f"(choose from {', '.join(get_task(self.task).splits)})")
        if taken := sorted(set(self.train) & set(TRAIN_SETS)):
            raise FairError(f"train: {', '.join(taken)} are the loop's to set, round by round (set --task, --student "
                            "or --dtype of the loop itself)")
        self.gen_config(0, self.student)
        self.train_settings(0, self.student)
        self.eval_config(self.student, self.out_dir / "eval-start")

    @property
    def out_dir(self) -> Path:
        return Path(self.out or run_dir(self.task, self.student).with_name(f"{model_short_name(self.student)}-loop"))

    @property
    def train_config_path(self) -> Path:
        """As teachers are named: a name of configs/train/ (from any folder), else a path."""
        path = Path(self.train_config)
        if path.suffix in (".yaml", ".yml") or path.exists():
            return path
        if not (CONFIGS_DIR / "train" / f"{self.train_config}.yaml").exists():
            known = sorted(p.stem for p in (CONFIGS_DIR / "train").glob("*.yaml"))
            raise FairError(f"train_config: no {self.train_config!r} in configs/train/ (known: {', '.join(known)}; "
                            "or a path to a YAML file)")
        return CONFIGS_DIR / "train" / f"{self.train_config}.yaml"

    def round_dir(self, round: int) -> Path:
        return self.out_dir / f"round{round}"

    def gen_config(self, round: int, student: str) -> GenConfig:
        """Round `round`'s mining and committee: its student, its folder, the loop's cache, the paper's names."""
        return GenConfig(**{n: getattr(self, n) for n in FROM_GEN} | {"student": student},
                         out=str(self.round_dir(round)), cache=str(self.out_dir / "requests.sqlite"),
                         paper_student=self.student, paper_round=round)

    def train_settings(self, round: int, student: str):
        """Round `round`'s training: train_config, then train, then what the loop sets (a TrainConfig)."""
        from train.train import TrainConfig  # torch: not for `fair -h`

        names = {f.name for f in dataclasses.fields(TrainConfig)}
        values = load_yaml(self.train_config_path, names) | dict(self.train) | {
            "task": self.task, "student": student, "committee": str(self.round_dir(round) / "committee.jsonl"),
            "out": str(self.round_dir(round) / "train"), "dtype": self.dtype, "data_dir": self.data_dir,
            "paper_feedback": None, "paper_rationale": None}
        return make_config(TrainConfig, values, source=f"{self.train_config} with train {dict(self.train)}")

    def eval_config(self, model: str, out: Path) -> EvalConfig:
        return EvalConfig(task=(self.task,), split=self.eval_split, model=model, limit=self.eval_limit,
                          engine=self.engine, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                          dtype=self.dtype, data_dir=self.data_dir, out=str(out))

    def eval_dir(self, out: Path) -> Path:
        """Where `fair eval` writes the task's answers under `out`."""
        return out / f"{get_task(self.task).name}-{self.eval_split}"


def train_stage(config) -> Path:
    from train.train import train  # torch: imported when a round trains, not when the command line is read

    return train(config)


def free_memory() -> None:
    """The stage before's model or engine (reference cycles) and the heap it freed: not the next stage's."""
    gc.collect()
    release_freed()


@dataclass
class Stages:
    """The stages a round runs (the tests put fakes here): each resumes on its own where it was cut off."""

    generate: Callable[[GenConfig], Any] = generate
    train: Callable[[Any], Path] = train_stage
    evaluate: Callable[[EvalConfig], Any] = evaluate
    report: Callable[..., Any] = build_report
    release: Callable[[], None] = free_memory  # before each stage


# ----------------------------------------------------------------------------------------------------------
# The record of finished stages


class Progress:
    """<out>/stages.json: each finished stage's name, seconds and result, written (atomically) as it finishes."""

    def __init__(self, path: Path, release: Callable[[], None]):
        self.path, self.release = path, release
        self.done: dict[str, dict[str, Any]] = load_json(path) or {}

    def run(self, name: str, work: Callable[[], Any]) -> dict[str, Any]:
        """What `work` returned if a dict (else {}), with its seconds: recorded the first time, read back from the
        record on every later run."""
        if name in self.done:
            print(f"--- {name}: done ({self.path})")
            return self.done[name]
        self.release()
        print(f"--- {name}", flush=True)
        began = time.perf_counter()
        result = work()
        result = (result if isinstance(result, dict) else {}) | {"seconds": round(time.perf_counter() - began, 1)}
        self.done[name] = result
        write_json(self.path, self.done)
        return result


# ----------------------------------------------------------------------------------------------------------
# The loop


def run_loop(config: LoopConfig, stages: Stages | None = None) -> dict[str, Any]:
    """Every round up to config.rounds (or the first with nothing to teach); the summary (loop.json's content)."""
    stages = stages or Stages()
    check_teachers(config.gen_config(0, config.student))  # before the first evaluation, not after it
    out = config.out_dir
    with folder_lock(out, "loop"):  # one loop per folder: two would train one round's folder at once
        check_unchanged(config, out / "loop.yaml")
        save_config(config, out / "loop.yaml")
        progress = Progress(out / "stages.json", stages.release)
        start = out / "eval-start"
        progress.run("start eval", lambda: stages.evaluate(config.eval_config(config.student, start)))
        student, before, stopped = config.student, config.eval_dir(start), None
        for r in range(config.rounds):
            try:
                student = run_round(config, r, student, before, stages, progress)
            except NothingToTeach as e:
                stopped = str(e)
                break
            before = config.eval_dir(config.round_dir(r) / "eval")
            write_summary(config, stopped)
        return write_summary(config, stopped)


class NothingToTeach(Exception):
    """Not an error: a round with nothing to train on ends the loop, so on every rerun; its reason is in loop.md."""


def run_round(config: LoopConfig, r: int, student: str, before: Path, stages: Stages, progress: Progress) -> str:
    """Round r from `student`: its trained model; NothingToTeach when the student made no mistake to learn from,
    or too few for one batch of training."""
    from train.train import TooFewExamples  # torch: when a round runs, not when the command line is read

    folder = config.round_dir(r)
    progress.run(f"round{r} gen", lambda: stages.generate(config.gen_config(r, student)))
    records = count_records(folder / "committee.jsonl")
    if not records:
        raise NothingToTeach(f"round {r}'s student made no mistake on the train questions mined: nothing is left "
                             "to teach")
    try:
        trained = progress.run(f"round{r} train", lambda: {
            "model": str(stages.train(config.train_settings(r, student))), "student": student, "records": records})
    except TooFewExamples as e:
        raise NothingToTeach(f"round {r}'s training: {e}: too little is left to teach") from None
    model, after = trained["model"], folder / "eval"
    progress.run(f"round{r} eval", lambda: evaluate_round(config, r, student, model, after, stages))
    progress.run(f"round{r} report", lambda: stages.report(folder, folder / "train", before, config.eval_dir(after),
                                                           folder, config.threshold, config.task))
    return model


def evaluate_round(config: LoopConfig, r: int, student: str, model: str, out: Path, stages: Stages) -> None:
    """Round r's trained student on the test split; its accuracy also goes to the trackers its training reported
    to (train's report_to), in the same runs, at their last step, as `make demo` sends its evaluation."""
    rows = stages.evaluate(config.eval_config(model, out))
    report_evaluation(config.train_settings(r, student), rows)


def count_records(path: Path) -> int:
    return sum(1 for _ in unique_ids(read_jsonl(path))) if path.exists() else 0


def check_unchanged(config: LoopConfig, saved_path: Path) -> None:
    """Refuse to go on in a folder made with other settings: its finished stages would not be what they say."""
    if not saved_path.exists():
        return
    names = {f.name for f in dataclasses.fields(LoopConfig)}
    saved = make_config(LoopConfig, load_yaml(saved_path, names), source=str(saved_path))
    changed = [n for n in sorted(names) if n not in (*FREE, *TRAINING) and getattr(saved, n) != getattr(config, n)]
    from train.resume import changed_settings  # torch: not for `fair -h`

    changed += changed_settings(config.train_settings(0, config.student), config.round_dir(0) / "train" / "train.yaml")
    if changed:
        raise FairError(f"{saved_path.parent} holds a loop run with other settings ({', '.join(changed)} changed); "
                        f"rerun with its settings ({saved_path}), use another --out, or delete that folder")


# ----------------------------------------------------------------------------------------------------------
# The rounds side by side: <out>/loop.md and loop.json, from the files the stages left.
#
# Two costs, because the rounds share one cache: "data" is what the round's records' replies cost at the
# teachers' prices (a reply an earlier round already bought counts again: it is what that data costs); "paid" is
# what the round added to the cache's ledger (committee_stats.json's spent_usd after the round, less the round
# before's): what the user was billed. A reply is one request (retries aside). What is missing shows "-".


def committee_numbers(path: Path) -> dict[str, Any]:
    """The round's committee records: how many, their replies, accepted rationales and what the replies cost."""
    records = replies = accepted = 0
    cost = 0.0
    for record in unique_ids(read_jsonl(path)) if path.exists() else ():
        records += 1
        replies += sum(1 for _ in committee_replies(record))
        accepted += sum(bool(r.get("accepted")) for r in record["rationales"].values())
        cost += sum(u.get("cost", 0.0) for u in record.get("usage", {}).values())
    return {"records": records, "replies": replies, "accepted_rationales": accepted, "data_cost_usd": round(cost, 6)}


def eval_numbers(folder: Path) -> dict[str, Any] | None:
    summary = load_json(folder / "summary.json")
    if summary is None:
        return None
    return {k: summary[k] for k in ("model", "correct", "total", "accuracy", "unparseable")}


def round_row(config: LoopConfig, r: int, spent_before: float | None) -> dict[str, Any]:
    folder = config.round_dir(r)
    mined = load_json(folder / "stats.json") or {}
    spent = ((load_json(folder / "committee_stats.json") or {}).get("budget") or {}).get("spent_usd")
    trained = load_json(folder / "train" / "train_summary.json") or {}
    mining = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").exists() else {}
    return {
        "round": r, "student": (mining or {}).get("model"),
        "mined": mined.get("total"), "train_accuracy": mined.get("accuracy"), "mistakes": mined.get("mistakes"),
        **committee_numbers(folder / "committee.jsonl"),
        "spent_usd": spent, "paid_usd": None if spent is None or spent_before is None else round(spent - spent_before, 6),
        "examples_trained": trained.get("examples"), "steps": trained.get("steps"),
        "test": eval_numbers(config.eval_dir(folder / "eval")),
    }


def write_summary(config: LoopConfig, stopped: str | None) -> dict[str, Any]:
    """loop.json and loop.md for every round that has begun; the summary, with `page` the markdown's path."""
    start_dir = config.eval_dir(config.out_dir / "eval-start")
    rows, spent, before = [], 0.0, start_dir
    for r in range(config.rounds):
        if not config.round_dir(r).exists():
            break
        rows.append(round_row(config, r, spent))
        spent = rows[-1]["spent_usd"]
        after = config.eval_dir(config.round_dir(r) / "eval")
        if rows[-1]["test"] and (before / "predictions.jsonl").exists():
            rows[-1]["change"] = change_line(before, after)
        before = after
    summary = {"task": config.task, "split": config.eval_split, "student": config.student,
               "start": eval_numbers(start_dir), "rounds": rows, "paid_usd": spent, "stopped": stopped,
               "page": str(config.out_dir / "loop.md")}
    write_json(config.out_dir / "loop.json", summary)
    (config.out_dir / "loop.md").write_text("\n".join(page(summary)) + "\n")
    return summary


def page(summary: dict[str, Any]) -> list[str]:
    lines = [f"# FAIR rounds: {summary['student']} on {summary['task']}", "",
             f"| round | train questions | train accuracy | mistakes | committee replies | accepted rationales | "
             f"data cost (USD) | paid (USD) | examples trained | {summary['split']} accuracy [95% CI] |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             f"| start (untrained) | | | | | | | | | {accuracy(summary['start'])} |"]
    for row in summary["rounds"]:
        cells = [row["mined"], percent(row["train_accuracy"]), row["mistakes"], row["replies"],
                 row["accepted_rationales"], money(row["data_cost_usd"]), money(row["paid_usd"]),
                 row["examples_trained"], accuracy(row["test"])]
        lines.append(f"| {row['round']} | " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    lines += ["", "Round r mines round r-1's trained student (round 0's: the untrained one) on the train questions (its "
              "train accuracy), asks the committee about its mistakes and trains it on the replies (the "
              f"{summary['split']} accuracy is the trained student's).",
              f"Paid in all: ${money(summary['paid_usd'])} (the loop's cache ledger; data cost counts a reply reused "
              "from an earlier round again).", ""]
    changes = [f"- round {row['round']} against the row before: {row['change']}" for row in summary["rounds"]
               if row.get("change")]
    lines += ["## Change, round by round", "", *changes, ""] if changes else []
    if summary["stopped"]:
        lines += [f"The loop stopped early: {summary['stopped']}.", ""]
    return lines


def accuracy(test: dict[str, Any] | None) -> str:
    if not test:
        return "-"
    return f"{test['accuracy']:.1%} [{wilson(test['correct'], test['total'])}] ({test['correct']}/{test['total']})"


def money(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = config_parser(LoopConfig, "python -m cli.loop", __doc__).parse_args(argv)
    return main_guard("fair loop", lambda: print_done(run_loop(build_config(LoopConfig, args))))


def print_done(summary: dict[str, Any]) -> None:
    print(f"\nthe rounds, side by side: {summary['page']}")


if __name__ == "__main__":  # vLLM spawns processes
    sys.exit(main())
