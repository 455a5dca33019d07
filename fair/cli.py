"""The `fair` command: one subcommand per pipeline stage.

    fair mine    run the student over a train split and keep its mistakes      (gen/mine.py)
    fair merge   join the shards of `fair mine --shard i/N` runs, checked       (gen/merge.py)
    fair committee   feedback, rationales and peer reviews from the teachers    (gen/committee/run.py)
                     --server URL: as a job of a `fair serve` instead            (gen/serve/remote.py)
    fair serve   the committee as a service: jobs, OpenAI's batches, one budget (gen/serve/server.py)
    fair estimate    requests, tokens, USD and hours a committee run will take  (gen/committee/estimate.py)
    fair gen     mine + committee + the paper's files, in one go                (gen/pipeline.py)
    fair teachers serve   the offline committee simulator                       (gen/offline/cli.py)
    fair train   alpha * feedback loss + (1 - alpha) * rationale loss            (train/train.py)
    fair eval    accuracy and wrong predictions on one or more tasks            (eval/evaluate.py)
    fair grade   re-grade a predictions file, ours or the paper's               (eval/regrade.py)
    fair import-mistakes   turn the paper's *_false_round0.json into our mistakes.jsonl
    fair import-committee  turn the paper's *_feedback/_rationale_round0.json into committee.jsonl
    fair report  one Markdown page with plots for a whole run                   (eval/report.py)
    fair tasks   list the registered tasks
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sqlite3
import sys
from typing import NoReturn

from fair.config import add_config_arguments, build_config
from fair.errors import FairError


def cmd_mine(args: argparse.Namespace) -> int:
    from gen.mine import MineConfig, mine

    mine(build_config(MineConfig, args))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from gen.merge import merge
    from gen.mine import MineConfig

    merge(build_config(MineConfig, args), force=args.force)
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from gen.committee.estimate import EstimateConfig, estimate

    estimate(build_config(EstimateConfig, args))
    return 0


def cmd_committee(args: argparse.Namespace) -> int:
    from gen.committee.run import CommitteeConfig, committee

    config = build_config(CommitteeConfig, args)
    if config.server:
        from gen.serve.remote import run_remote

        run_remote(config)
    else:
        committee(config)
    return 0


def cmd_gen(args: argparse.Namespace) -> int:
    from gen.pipeline import GenConfig, generate

    generate(build_config(GenConfig, args))
    return 0


def cmd_teachers_serve(args: argparse.Namespace) -> int:
    from gen.offline import cli as offline_cli

    return offline_cli.run(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from gen.serve.server import ServeConfig, serve

    return serve(build_config(ServeConfig, args))


def cmd_import_committee(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fair.jsonl import append_jsonl
    from fair.paper import import_committee
    from fair.tasks import get_task

    task = get_task(args.task)
    records = import_committee(task, args.feedback, args.rationale, task.load(args.split, args.data_dir))
    path = Path(args.out)
    if path.exists():
        raise FairError(f"{path} exists: pass another --out, or remove it to import again")
    append_jsonl(path, records)
    accepted = sum(r["accepted"] for rec in records for r in rec["rationales"].values())
    print(f"imported {len(records)} mistakes with {accepted} accepted rationales into {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from train.train import TrainConfig, train

    train(build_config(TrainConfig, args))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from eval.evaluate import EvalConfig, evaluate

    evaluate(build_config(EvalConfig, args))
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from eval import regrade

    return regrade.run(args)


def cmd_import_mistakes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fair.jsonl import append_jsonl
    from fair.models import model_short_name
    from fair.paper import import_mistakes
    from fair.student import run_dir
    from fair.tasks import get_task

    task = get_task(args.task)
    answers = import_mistakes(task, args.file, task.load(args.split, args.data_dir))
    kept = [a for a in answers if a.is_mistake]
    student = model_short_name(args.file).split(f"_{args.task}", 1)[0].split("_", 1)[0]
    out = Path(args.out or run_dir(task.name, student))
    path = out / "mistakes.jsonl"
    if path.exists():
        raise FairError(f"{path} exists: pass another --out, or remove it to import again")
    append_jsonl(path, (a.to_json() for a in kept))
    print(f"imported {len(answers)} records from {args.file}: {len(kept)} mistakes written to {path}; "
          f"{len(answers) - len(kept)} dropped because our grader judges them correct")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from eval import report

    return report.run(args)


def cmd_tasks(args: argparse.Namespace) -> int:
    from fair.tasks import registry, task_names

    for name in task_names():
        task = registry()[name]
        print(f"{name:<12} {task.answer_type:<7} splits: {', '.join(task.splits):<24} hub: {task.hub_id}")
    return 0


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error: the usage of a command with 30 flags would bury it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} -h` lists the settings)\n")


def merge_arguments(p: argparse.ArgumentParser) -> None:
    from gen.mine import MineConfig

    add_config_arguments(p, MineConfig)
    p.add_argument("--force", action="store_true", help="replace an earlier merge's answers and mistakes")


def import_committee_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True)
    p.add_argument("--feedback", required=True, help="the paper's *_feedback_round0.json")
    p.add_argument("--rationale", required=True, help="the paper's *_rationale_round0.json")
    p.add_argument("--out", required=True, help="the committee.jsonl to write")
    p.add_argument("--split", default="train")
    p.add_argument("--data-dir", default=None)


def import_mistakes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the paper's mistake file (JSON array)")
    p.add_argument("--task", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="output folder (default data/<task>/<student from the file name>)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand; `train`'s flags only when it is the command: its module imports torch (seconds, and
    200 MB that a long committee run would otherwise carry)."""
    from eval import regrade, report
    from eval.evaluate import EvalConfig
    from gen.committee.estimate import EstimateConfig
    from gen.committee.run import CommitteeConfig
    from gen.mine import MineConfig
    from gen.offline import cli as offline_cli
    from gen.pipeline import GenConfig
    from gen.serve.server import ServeConfig

    parser = Parser(prog="fair", description="FAIR: distil reasoning from a committee of teachers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, run, configure, under=sub) -> None:
        p = under.add_parser(name, help=help)
        configure(p)
        p.set_defaults(run=run)

    def config(cls):
        return lambda p: add_config_arguments(p, cls)

    def train_config(p: argparse.ArgumentParser) -> None:
        if command == "train":
            from train.train import TrainConfig

            add_config_arguments(p, TrainConfig)

    add("mine", "run the student over a split and keep its mistakes", cmd_mine, config(MineConfig))
    add("merge", "join the shards of a sharded `fair mine` run (give it the same flags)", cmd_merge, merge_arguments)
    add("committee", "collect the teachers' feedback, rationales and peer reviews", cmd_committee,
        config(CommitteeConfig))
    add("estimate", "requests, tokens, cost and hours of a committee run, before it runs", cmd_estimate,
        config(EstimateConfig))
    add("gen", "mine + committee + the paper's files (what `make gen` runs)", cmd_gen, config(GenConfig))
    teachers = sub.add_parser("teachers", help="teacher tools").add_subparsers(dest="teachers_command", required=True)
    add("serve", "serve the offline committee simulator (OpenAI and Gemini wire formats)", cmd_teachers_serve,
        offline_cli.add_arguments, under=teachers)
    add("serve", "the committee as a service: jobs, OpenAI's files and batches, one budget", cmd_serve,
        config(ServeConfig))
    add("import-committee", "import the paper's feedback and rationale files", cmd_import_committee,
        import_committee_arguments)
    add("train", "fine-tune the student on the committee's feedback and rationales", cmd_train, train_config)
    add("eval", "evaluate a student on one or more tasks", cmd_eval, config(EvalConfig))
    add("grade", "re-grade a predictions file (ours or the paper's format)", cmd_grade, regrade.add_arguments)
    add("import-mistakes", "import the paper's *_false_round0.json as mistakes.jsonl", cmd_import_mistakes,
        import_mistakes_arguments)
    add("report", "write report.md with plots for a run (accuracy, reviews, loss, time)", cmd_report,
        report.add_arguments)
    add("tasks", "list the registered tasks", cmd_tasks, lambda p: None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    # FAIR_LOG_LEVEL=INFO shows every retry and cool-down; the default shows warnings (final failures) only.
    logging.basicConfig(level=os.environ.get("FAIR_LOG_LEVEL", "WARNING").upper(), format="%(name)s: %(message)s")
    try:
        return args.run(args)
    except FairError as e:
        print(f"fair {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fair {args.command}: interrupted; finished work is saved, rerun to resume", file=sys.stderr)
        return 130
    except (OSError, sqlite3.Error) as e:
        if not storage_full(e):
            raise
        print(f"fair {args.command}: error: a write failed ({e}): the disk is full or a file is over its size "
              "limit; finished work is saved, free some space and rerun to resume", file=sys.stderr)
        return 1


def storage_full(e: BaseException) -> bool:
    """A write refused for want of space: ENOSPC, EFBIG (RLIMIT_FSIZE), EDQUOT, or SQLite's FULL and IOERR
    (SQLite reports a refused write as a generic I/O error). Any other error keeps its traceback."""
    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


if __name__ == "__main__":
    sys.exit(main())
