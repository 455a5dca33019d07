"""The `fair` command: one subcommand per pipeline stage.

    fair mine    run the student over a train split and keep its mistakes      (gen/mine.py)
    fair merge   join the shards of `fair mine --shard i/N` runs, checked       (gen/merge.py)
    fair committee   feedback, rationales (and peer reviews) from the teachers  (gen/committee/run.py)
                     --server URL: as a job of a `fair serve` instead            (serve/remote.py)
    fair serve   the committee as a service: jobs, OpenAI's batches, one budget (serve/server.py)
    fair view FOLDER the page's record viewer over a local run, read-only     (serve/view.py)
    fair estimate    requests, tokens, USD and hours a committee run will take  (gen/committee/estimate.py)
    fair gen     mine + committee + the paper's files, in one go                (cli/pipeline.py)
    fair loop    rounds of gen + train + eval, each from the last round's student (cli/loop.py)
    fair teachers serve   the offline committee simulator                       (simulator/cli.py)
    fair train   alpha * feedback loss + (1 - alpha) * rationale loss            (train/train.py)
    fair eval    accuracy and wrong predictions on one or more tasks            (eval/evaluate.py)
    fair grade   re-grade a predictions file, ours or the paper's               (eval/regrade.py)
    fair import-mistakes   turn the paper's *_false_round0.json into our mistakes.jsonl   (gen/from_paper.py)
    fair import-committee  the paper's *_feedback/_rationale_round0.json as committee.jsonl  (gen/from_paper.py)
    fair report  one Markdown page with plots for a whole run                   (eval/report.py)
    fair tasks   list the tasks: the built-ins and those declared in configs/tasks/*.yaml
    fair export  a committee run as a Hugging Face dataset (--push-to-hub REPO)  (gen/export.py)
    fair push-model  a trained model folder, with its model card, to the hub    (train/card.py)

Every option of every command is a field of the command's settings class, documented once beside the field;
`fair COMMAND -h` shows each with its choices and default, and each takes `--config FILE.yaml` and trailing
`key=value` overrides (fair/config.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from fair.config import Parser, add_config_arguments, build_config
from fair.errors import main_guard

# Each command's work: `run(config, args)`, where `config` is its settings class built from the defaults, the
# YAML, the flags and the key=value overrides (fair/config.py), and `args` the parsed command line.


def cmd_mine(config, args: argparse.Namespace) -> None:
    from gen.mine import mine

    mine(config)


def cmd_merge(config, args: argparse.Namespace) -> None:
    from gen.merge import merge

    merge(config, force=args.force)


def cmd_estimate(config, args: argparse.Namespace) -> None:
    from gen.committee.estimate import estimate

    estimate(config)


def cmd_committee(config, args: argparse.Namespace) -> None:
    if config.server:
        from serve.remote import run_remote

        run_remote(config)
    else:
        from gen.committee.run import committee

        committee(config)


def cmd_gen(config, args: argparse.Namespace) -> None:
    from cli.pipeline import generate

    generate(config)


def cmd_loop(config, args: argparse.Namespace) -> None:
    from cli.loop import print_done, run_loop

    print_done(run_loop(config))


def cmd_teachers_serve(config, args: argparse.Namespace) -> int:
    from simulator.cli import run

    return run(config)


def cmd_serve(config, args: argparse.Namespace) -> int:
    from serve.server import serve

    return serve(config)


def cmd_view(config, args: argparse.Namespace) -> int:
    from serve.view import view

    return view(config)


def cmd_import_committee(config, args: argparse.Namespace) -> None:
    from gen.from_paper import import_committee_file

    import_committee_file(config)


def cmd_import_mistakes(config, args: argparse.Namespace) -> None:
    from gen.from_paper import import_mistakes_file

    import_mistakes_file(config)


def cmd_train(config, args: argparse.Namespace) -> None:
    from train.train import train

    train(config)


def cmd_eval(config, args: argparse.Namespace) -> None:
    from eval.evaluate import evaluate

    evaluate(config)


def cmd_grade(config, args: argparse.Namespace) -> int:
    from eval import regrade

    return regrade.run(config)


def cmd_report(config, args: argparse.Namespace) -> int:
    from eval import report

    return report.run(config)


def cmd_export(config, args: argparse.Namespace) -> None:
    from gen.export import export

    export(config)


def cmd_push_model(config, args: argparse.Namespace) -> None:
    from train.card import push_model

    push_model(config)


def cmd_tasks(config, args: argparse.Namespace) -> None:
    from fair.tasks import declared_names, get_task, task_names

    for name in [*task_names(), *declared_names()]:  # a declared file that does not load stops the list, named
        task = get_task(name)
        print(f"{task.name:<12} {task.answer_type:<7} splits: {', '.join(task.splits):<24} {task.describe_source()}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand; `train`'s flags only when it is the command: its module imports torch (seconds, and
    200 MB that a long committee run would otherwise carry)."""
    from cli.loop import LoopConfig
    from cli.pipeline import GenConfig
    from eval.evaluate import EvalConfig
    from eval.regrade import GradeConfig
    from eval.report import ReportConfig
    from gen.committee.estimate import EstimateConfig
    from gen.committee.run import CommitteeConfig
    from gen.export import ExportConfig
    from gen.from_paper import ImportCommitteeConfig, ImportMistakesConfig
    from gen.mine import MineConfig
    from serve.config import ServeConfig
    from serve.view import ViewConfig
    from simulator.cli import SimulatorConfig
    from train.card import PushModelConfig

    parser = Parser(prog="fair", description="FAIR: distil reasoning from a committee of teachers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, run, settings: type | None, under: Any = sub, positional=()):
        p = under.add_parser(name, help=help, description=help)
        if settings is not None:
            add_config_arguments(p, settings, positional)
        p.set_defaults(run=run)
        return p

    add("mine", "run the student over a split and keep its mistakes", cmd_mine, MineConfig)
    add("merge", "join the shards of a sharded `fair mine` run (give it the same flags)", cmd_merge,
        MineConfig).add_argument("--force", action="store_true",
                                 help="replace an earlier merge's answers and mistakes (default: keep them)")
    add("committee", "collect the teachers' feedback, rationales (and reviews)", cmd_committee, CommitteeConfig)
    add("estimate", "requests, tokens, cost and hours of a committee run, before it runs", cmd_estimate,
        EstimateConfig)
    add("gen", "mine + committee + the paper's files (what `make gen` runs)", cmd_gen, GenConfig)
    add("loop", "rounds: mine, committee, train, evaluate, then again from the trained student (what `make loop` runs)",
        cmd_loop, LoopConfig)
    teachers = sub.add_parser("teachers", help="teacher tools").add_subparsers(dest="teachers_command", required=True)
    add("serve", "serve the offline committee simulator (OpenAI, Gemini and Anthropic wire formats)",
        cmd_teachers_serve, SimulatorConfig, under=teachers)
    add("serve", "the committee as a service: jobs, OpenAI's files and batches, one budget", cmd_serve, ServeConfig)
    add("view", "the page's record viewer over a local run's folder, read-only", cmd_view, ViewConfig,
        positional=("folder",))
    add("import-committee", "import the paper's feedback and rationale files", cmd_import_committee,
        ImportCommitteeConfig)
    add("train", "fine-tune the student on the committee's feedback and rationales", cmd_train,
        train_settings() if command == "train" else None)
    add("eval", "evaluate a student on one or more tasks", cmd_eval, EvalConfig)
    add("grade", "re-grade a predictions file (ours or the paper's format)", cmd_grade, GradeConfig,
        positional=("file",))
    add("import-mistakes", "import the paper's *_false_round0.json as mistakes.jsonl", cmd_import_mistakes,
        ImportMistakesConfig, positional=("file",))
    add("report", "write report.md with plots for a run (accuracy, reviews, loss, time)", cmd_report, ReportConfig)
    add("export", "write a committee run as a Hugging Face dataset (Parquet, card); --push-to-hub uploads it",
        cmd_export, ExportConfig, positional=("folder",))
    add("push-model", "upload a trained model folder with its model card to the Hugging Face hub", cmd_push_model,
        PushModelConfig, positional=("folder", "repo"))
    add("tasks", "list the tasks: the built-ins and those declared in configs/tasks/*.yaml", cmd_tasks, None)
    return parser


def train_settings() -> type:
    from train.train import TrainConfig

    return TrainConfig


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    # FAIR_LOG_LEVEL=INFO shows every retry and cool-down; the default shows warnings (final failures) only.
    logging.basicConfig(level=os.environ.get("FAIR_LOG_LEVEL", "WARNING").upper(), format="%(name)s: %(message)s")

    def work() -> int | None:
        settings = getattr(args, "settings", None)
        return args.run(build_config(settings, args) if settings else None, args)

    command = " ".join(filter(None, (args.command, getattr(args, "teachers_command", None))))
    return main_guard(f"fair {command}", work)


if __name__ == "__main__":
    sys.exit(main())
