"""`make experiment`: does FAIR distillation help a real student? Units of work that a 2-core CPU finishes.

    .venv/bin/python -m cli.experiment                     # every unit whose result file is missing
    .venv/bin/python -m cli.experiment --units paper-fair-s0 base
    .venv/bin/python -m cli.experiment --list              # the units and which are done
    .venv/bin/python -m cli.experiment --render            # only rebuild docs/results.md

One unit trains one variant of SmolLM2-135M-Instruct with the frozen budget of configs/train/experiment.yaml,
then evaluates it on the 300 SVAMP test questions (`base` only evaluates). A finished unit writes two small files, meant to be
committed: docs/results/<unit>.json (accuracy, the ids answered correctly, data report, losses, wall time,
command, commit, machine, the dtype of training and of evaluation: the budget's, bfloat16 for a `-bf16` unit) and
docs/results/<unit>.predictions.jsonl.gz (every answer: id, raw output, extracted answer), so anyone can re-grade
a unit without rerunning it. Weights stay in data/experiment/.
A run skips units whose file exists and rebuilds docs/results.md from the files (eval/results.py): the
experiment can be completed over several sessions and a lost machine loses at most one unit.

Two data sources. `paper`: the paper's published SVAMP files (real GPT-3.5, Gemini and Mixtral texts with
their peer-review scores, ../shared/data/seed). `own`: our loop, the offline committee on SmolLM2's own
SVAMP train mistakes, mined once into <work>/own-corpus and shared by every own unit's committee folder; the
round units (own-gold is round 0, own-rounds-r1 and -r2) run `fair loop` in <work>/own-rounds
(cli/experiment_units.py says which unit's data comes from where).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cli.experiment_units import SHARED_MINING, UNITS, Unit, share_mining
from cli.loop import LoopConfig, run_loop
from cli.pipeline import GenConfig, generate
from eval.evaluate import EvalConfig, evaluate
from eval.results import render_results
from fair.config import CONFIGS_DIR, Validated, at_least, build_config, config_parser, load_yaml, make_config
from fair.decontam import clean_ids
from fair.engines.base import EngineName
from fair.errors import FairError, main_guard
from fair.prices import data_cost, load_prices
from fair.recipes import recorded_filter, run_filter
from fair.records import teacher_of
from fair.tasks import default_data_dir, get_task
from gen.mine import mine
from train.data import load_records
from train.trackers import report_evaluation
from train.train import TrainConfig, train

SEED_DIR = default_data_dir() / "seed"
PAPER_FILES = {"paper_feedback": str(SEED_DIR / "Llama-2-7b-chat-hf_svamp_feedback_round0.json"),
               "paper_rationale": str(SEED_DIR / "Llama-2-7b-chat-hf_svamp_rationale_round0.json")}
RESULTS = "docs/results"  # the committed unit files
MAX_NEW_TOKENS = 256  # SVAMP answers: the base model scores the same as at 512, on fewer tokens (docs/benchmarks.md)
ENGINE, BATCH_SIZE = "hf", 64  # the transformers engine (no vLLM start-up per unit), 64 rows decoding together

# The frozen training budget, the same for every unit (why these values: the file's comments).
BUDGET_FILE = CONFIGS_DIR / "train" / "experiment.yaml"
BUDGET = load_yaml(BUDGET_FILE, {f.name for f in dataclasses.fields(TrainConfig)})


@dataclass
class ExperimentConfig(Validated):
    units: tuple[str, ...] = ()  # units to run (--list shows them); none given: every missing one
    list: bool = False  # list the units and which are done, and stop
    render: bool = False  # only rebuild docs/results.md from docs/results/
    results: str = RESULTS  # the unit files; the page goes to <results>.md
    work: str = "data/experiment"  # weights, logs and predictions of each unit
    engine: EngineName = ENGINE  # the transformers engine: no vLLM start-up per unit
    batch_size: int = BATCH_SIZE  # rows decoding together
    test_limit: int | None = None  # smoke runs: the first N test questions only
    train_limit: int | None = None  # smoke runs: mine only the first N train questions
    max_steps: int | None = None  # smoke runs: stop training after N steps

    def validate(self) -> None:
        at_least(self, 1, "batch_size", "test_limit", "train_limit", "max_steps")
        if (self.test_limit or self.train_limit or self.max_steps) and Path(self.results) == Path(RESULTS):
            raise FairError("test_limit, train_limit and max_steps are for smoke runs: give them their own --results "
                            "and --work, so that no shortened unit counts as done")
        if unknown := [u for u in self.units if u not in UNITS]:
            raise FairError(f"unknown unit(s) {', '.join(unknown)}; --list shows them")


def run_unit(unit: Unit, args: ExperimentConfig) -> Path:
    results, work = Path(args.results), Path(args.work)
    (results / f"{unit.name}.json").unlink(missing_ok=True)  # rerun: the unit counts as missing until both are new
    began, revision = time.perf_counter(), commit()  # the code that runs: a checkout during the unit changes HEAD
    model, data_report, losses, train_dtype, eval_out = "smollm2-135m", None, None, None, work / unit.name / "eval"
    if unit.train is not None:
        config, model = train_unit(unit, args, work)
        data_report = json.loads((config.out_dir / "data_report.json").read_text())
        losses = loss_summary(config.out_dir / "log.jsonl")
        train_dtype = json.loads((config.out_dir / "train_summary.json").read_text()).get("dtype")
    if unit.round is not None:  # the loop evaluated the round as below (loop_config): its answers are reused
        eval_out = loop_config(unit, args, work).round_dir(unit.round) / "eval"
    [row] = evaluate(EvalConfig(task=("svamp",), model=model, engine=args.engine, batch_size=args.batch_size,
                                dtype=unit_budget(unit)["dtype"],
                                max_new_tokens=MAX_NEW_TOKENS, limit=args.test_limit, out=str(eval_out)))
    if unit.train is not None:
        report_evaluation(config, [row])  # into the training's runs of the trackers its report_to names, if any
    wanted = {e.id for e in get_task("svamp").load("test")[: args.test_limit]}  # what `evaluate` counted
    answers = [json.loads(line) for line in (eval_out / "svamp-test" / "predictions.jsonl").open()]
    answers = sorted((a for a in answers if a["id"] in wanted), key=lambda a: a["index"])
    results.mkdir(parents=True, exist_ok=True)
    with gzip.open(results / f"{unit.name}.predictions.jsonl.gz.partial", "wt") as out:
        for a in answers:
            out.write(json.dumps({k: a[k] for k in ("id", "prediction", "extracted", "correct")}) + "\n")
    result = {
        "data_cost": data_cost_of(unit, work),
        "unit": unit.name, "source": unit.source, "description": unit.description, "train": unit.train,
        "budget": unit_budget(unit) if unit.train is not None else None,
        "accuracy": row["accuracy"], "correct": row["correct"],
        "total": row["total"], "unparseable": row["unparseable"], "max_new_tokens": MAX_NEW_TOKENS,
        "correct_ids": [a["id"] for a in answers if a["correct"] is True], "data_report": data_report,
        "loss": losses, "wall_s": round(time.perf_counter() - began, 1), "command": command(),
        "commit": revision, "machine": machine(), "device": device(),
        "dtype": {"train": train_dtype, "eval": row["dtype"]},  # each {requested, dtype, reason}: fair/dtype.py
    }
    (results / f"{unit.name}.predictions.jsonl.gz.partial").rename(results / f"{unit.name}.predictions.jsonl.gz")
    path = results / f"{unit.name}.json"
    path.with_suffix(".json.partial").write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".json.partial").rename(path)  # last: a unit counts as done only with both files whole
    print(f"unit {unit.name}: {row['correct']}/{row['total']} in {result['wall_s']:.0f} s -> {path}")
    return path


# The prices a source's data is costed at: the paper's teachers', and for our loop the offline committee's, which
# are its real counterparts' (the default committee's models: configs/teachers/offline.yaml).
PRICES = {"paper": "paper", "own": "offline"}


def data_cost_of(unit: Unit, work: Path) -> dict | None:
    """What the unit's data cost in teacher calls (fair/prices.py): requests, tokens, dollars; None for no training,
    or our loop's corpus when it is not on this machine."""
    if unit.train is None:
        return None
    task = get_task("svamp")
    if unit.source == "paper":
        runs = [load_records(PAPER_FILES["paper_feedback"], task, rationale_path=PAPER_FILES["paper_rationale"])]
    elif all(corpus.exists() for corpus in unit.corpora(work)):
        runs = [load_records(corpus, task) for corpus in unit.corpora(work)]  # a round unit's: every round's
    else:
        return None
    teacher, prices = unit.train.get("teacher", "mixed"), load_prices(PRICES[unit.source])
    totals = []
    for records in runs:
        if teacher not in ("mixed", "all"):  # one teacher's data: only its requests were needed
            records = [r | {"feedback": only(r["feedback"], teacher), "rationales": only(r["rationales"], teacher)}
                       for r in records]
        filter = unit.train.get("filter") or run_filter(map(recorded_filter, records), unit.name)
        totals.append(data_cost(records, prices, filter, task).total)
    return {"requests": sum(t.requests for t in totals), "input_tokens": sum(t.input_tokens for t in totals),
            "output_tokens": sum(t.output_tokens for t in totals), "usd": round(sum(t.usd for t in totals), 4),
            "prices": PRICES[unit.source], "filter": filter, **({"rounds": len(runs)} if unit.round is not None else {})}


def only(entries: dict, teacher: str) -> dict:
    return {k: e for k, e in entries.items() if teacher_of(k) == teacher}


def unit_costs(results: Path, work: Path) -> dict[str, dict]:
    """Each finished unit's data cost: as its file recorded it, else computed now from the same data."""
    costs = {}
    for name, unit in UNITS.items():
        path = results / f"{name}.json"
        if path.exists() and (cost := json.loads(path.read_text()).get("data_cost") or data_cost_of(unit, work)):
            costs[name] = cost
    return costs


def train_unit(unit: Unit, args: ExperimentConfig, work: Path) -> tuple[TrainConfig, str]:
    """Train the unit's variant: its training's config and the trained model."""
    if unit.round is None:
        config = train_config(unit, args, work)
        return config, str(train(config))
    loop = loop_config(unit, args, work)
    mine_shared(args, work, loop.round_dir(0))
    run_loop(loop)  # resumes: the rounds an earlier unit ran are done (<work>/own-rounds/stages.json)
    trained = json.loads((loop.out_dir / "stages.json").read_text()).get(f"round{unit.round} train")
    if trained is None:
        raise FairError(f"unit {unit.name}: the loop in {loop.out_dir} stopped before round {unit.round} trained "
                        f"(its loop.md says why)")
    return loop.train_settings(unit.round, trained["student"]), trained["model"]


def unit_budget(unit: Unit) -> dict:
    """The frozen budget as the unit runs it: in its own dtype where it names one (a `-bf16` unit)."""
    return BUDGET | ({"dtype": unit.dtype} if unit.dtype else {})


def train_config(unit: Unit, args: ExperimentConfig, work: Path) -> TrainConfig:
    values = dataclasses.asdict(TrainConfig()) | unit_budget(unit) | unit.train
    values["out"] = str(work / unit.name / "train")
    if unit.source == "paper":
        values |= PAPER_FILES
    else:
        values["committee"] = str(own_corpus(unit, args, work) / "committee.jsonl")
    if args.max_steps:
        values["max_steps"] = args.max_steps
    return make_config(TrainConfig, values, source=f"experiment unit {unit.name}")


def gen_settings(args: ExperimentConfig) -> dict:
    """How our loop mines and asks the committee, for every corpus: the student answers as it is evaluated."""
    return {"task": "svamp", "teachers": "offline", "engine": args.engine, "batch_size": args.batch_size,
            "max_new_tokens": MAX_NEW_TOKENS, "dtype": BUDGET["dtype"], "limit": args.train_limit}


def own_corpus(unit: Unit, args: ExperimentConfig, work: Path) -> Path:
    """Mine SmolLM2's SVAMP train mistakes once (<work>/own-corpus) and ask the offline committee in the unit's
    corpus folder (experiment_units.py); both resume, so a later unit finds the work done."""
    out = work / unit.corpus
    mine_shared(args, work, out)
    generate(GenConfig(**gen_settings(args) | unit.committee, out=str(out)))
    return out


def mine_shared(args: ExperimentConfig, work: Path, folder: Path) -> None:
    """The shared mining (resumed where it stopped), then copied to start `folder` if that is another one."""
    mine(GenConfig(**gen_settings(args), out=str(work / SHARED_MINING)).mine_config())
    share_mining(work, folder)


def loop_config(unit: Unit, args: ExperimentConfig, work: Path) -> LoopConfig:
    """The rounds (cli/loop.py) with the budget, and the engine and evaluation of every other unit."""
    train = unit.train | ({"max_steps": args.max_steps} if args.max_steps else {})
    return LoopConfig(**gen_settings(args) | unit.committee, rounds=unit.round + 1, train_config=BUDGET_FILE.stem,
                      train=train, eval_split="test", eval_limit=args.test_limit, out=str(work / unit.corpus))


def loss_summary(log: Path) -> dict:
    steps = [json.loads(line) for line in log.open()]
    head, tail = steps[: max(1, len(steps) // 10)], steps[-max(1, len(steps) // 10):]
    mean = lambda rows: round(sum(r["loss"] for r in rows) / len(rows), 4)  # noqa: E731
    return {"steps": len(steps), "first_10pct": mean(head), "last_10pct": mean(tail)}


def command() -> str:
    return shlex.join([Path(sys.executable).name, "-m", "cli.experiment", *sys.argv[1:]])


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def device() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def machine() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")


def experiment(args: ExperimentConfig) -> None:
    if args.list:
        for unit in UNITS.values():
            done = "done" if (Path(args.results) / f"{unit.name}.json").exists() else "missing"
            print(f"{unit.name:<20} {done:<8} {unit.source:<6} {unit.description}")
        return
    if not args.render:
        for name in args.units or [u for u in UNITS if not (Path(args.results) / f"{u}.json").exists()]:
            run_unit(UNITS[name], args)
    costs, clean = unit_costs(Path(args.results), Path(args.work)), clean_ids(get_task("svamp"), "test")
    print(f"wrote {render_results(Path(args.results), UNITS, Path(args.results).with_suffix('.md'), costs, clean)}")


def main(argv: list[str] | None = None) -> int:
    args = config_parser(ExperimentConfig, "python -m cli.experiment", __doc__).parse_args(argv)
    return main_guard("experiment", lambda: experiment(build_config(ExperimentConfig, args)))


if __name__ == "__main__":
    sys.exit(main())
