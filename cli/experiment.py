"""`make experiment`: does FAIR distillation help a real student? Units of work that a 2-core CPU finishes.

    .venv/bin/python -m cli.experiment                     # every unit whose result file is missing
    .venv/bin/python -m cli.experiment --units paper-fair-s0 base
    .venv/bin/python -m cli.experiment --list              # the units and which are done
    .venv/bin/python -m cli.experiment --render            # only rebuild docs/results.md

One unit trains one variant of SmolLM2-135M-Instruct with the frozen budget of configs/train/experiment.yaml,
then evaluates it on the 300 SVAMP test questions (`base` only evaluates). A finished unit writes two small files, meant to be
committed: docs/results/<unit>.json (accuracy, the ids answered correctly, data report, losses, wall time,
command, commit, machine, the dtype of training and of evaluation) and
docs/results/<unit>.predictions.jsonl.gz (every answer: id, raw output, extracted answer), so anyone can re-grade
a unit without rerunning it. Weights stay in data/experiment/.
A run skips units whose file exists and rebuilds docs/results.md from the files (eval/results.py): the
experiment can be completed over several sessions and a lost machine loses at most one unit.

Two data sources. `paper`: the paper's published SVAMP files (real GPT-3.5, Gemini and Mixtral texts with
their peer-review scores, ../shared/data/seed). `own`: our loop, the offline committee on SmolLM2's own
SVAMP train mistakes (mined once into data/svamp/smollm2-135m, then reused by both units).
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


@dataclass(frozen=True)
class Unit:
    name: str
    source: str  # "paper", "own" or "none"
    description: str
    train: dict | None  # TrainConfig overrides on top of BUDGET; None: no training


def _units() -> dict[str, Unit]:
    """In the order they run: one of each comparison first, then the other seeds."""
    fair, noreview = "FAIR: mixed, peer-reviewed, alpha 0.5", "mixed, no peer review"
    units = [Unit("base", "none", "no training", None),
             Unit("paper-fair-s0", "paper", fair, {"teacher": "mixed", "seed": 0}),
             Unit("paper-noreview-s0", "paper", noreview, {"teacher": "mixed", "filter": "none", "seed": 0}),
             # GPT-3.5 is the single best teacher by the committee's own measure, chosen before any test result:
             # the most rationales accepted by its peers in the paper's file (355 of 387, Mixtral 352, Gemini 267).
             Unit("paper-single-gpt", "paper", "single best teacher (GPT-3.5), raw", {"teacher": "gpt", "filter": "none"}),
             Unit("paper-alpha0", "paper", "FAIR with alpha 0 (rationales only)", {"teacher": "mixed", "alpha": 0.0}),
             Unit("paper-alpha1", "paper", "FAIR with alpha 1 (feedback only)", {"teacher": "mixed", "alpha": 1.0}),
             Unit("own-fair", "own", fair, {"teacher": "mixed"}),
             Unit("own-noreview", "own", noreview, {"teacher": "mixed", "filter": "none"})]
    for seed in (1, 2):
        units += [Unit(f"paper-fair-s{seed}", "paper", fair, {"teacher": "mixed", "seed": seed}),
                  Unit(f"paper-noreview-s{seed}", "paper", noreview, {"teacher": "mixed", "filter": "none", "seed": seed})]
    # The recipes (docs/results.md, "Recipes"): which rationales to keep, and how many a mistake.
    recipes = [("gold", "mixed, gold check (no review)", {"teacher": "mixed", "filter": "gold"}),
               ("goldreview", "mixed, gold check + peer review", {"teacher": "mixed", "filter": "gold+review"}),
               ("all", "every teacher's texts, unfiltered", {"teacher": "all", "filter": "none"}),
               ("allgold", "every teacher's texts, gold check", {"teacher": "all", "filter": "gold"})]
    for seed in (0, 1, 2):
        units += [Unit(f"paper-{name}-s{seed}", "paper", description, train | {"seed": seed})
                  for name, description, train in recipes]
    return {u.name: u for u in units}


UNITS = _units()


def run_unit(unit: Unit, args: ExperimentConfig) -> Path:
    results, work = Path(args.results), Path(args.work)
    (results / f"{unit.name}.json").unlink(missing_ok=True)  # rerun: the unit counts as missing until both are new
    began = time.perf_counter()
    model, data_report, losses, train_dtype = "smollm2-135m", None, None, None
    if unit.train is not None:
        config = train_config(unit, args, work)
        model = str(train(config))
        data_report = json.loads((config.out_dir / "data_report.json").read_text())
        losses = loss_summary(config.out_dir / "log.jsonl")
        train_dtype = json.loads((config.out_dir / "train_summary.json").read_text()).get("dtype")
    [row] = evaluate(EvalConfig(task=("svamp",), model=model, engine=args.engine, batch_size=args.batch_size,
                                dtype=BUDGET["dtype"],
                                max_new_tokens=MAX_NEW_TOKENS, limit=args.test_limit,
                                out=str(work / unit.name / "eval")))
    if unit.train is not None:
        report_evaluation(config, [row])  # into the training's runs of the trackers its report_to names, if any
    wanted = {e.id for e in get_task("svamp").load("test")[: args.test_limit]}  # what `evaluate` counted
    answers = [json.loads(line) for line in (work / unit.name / "eval" / "svamp-test" / "predictions.jsonl").open()]
    answers = sorted((a for a in answers if a["id"] in wanted), key=lambda a: a["index"])
    results.mkdir(parents=True, exist_ok=True)
    with gzip.open(results / f"{unit.name}.predictions.jsonl.gz.partial", "wt") as out:
        for a in answers:
            out.write(json.dumps({k: a[k] for k in ("id", "prediction", "extracted", "correct")}) + "\n")
    result = {
        "data_cost": data_cost_of(unit, work),
        "unit": unit.name, "source": unit.source, "description": unit.description, "train": unit.train,
        "budget": BUDGET if unit.train is not None else None, "accuracy": row["accuracy"], "correct": row["correct"],
        "total": row["total"], "unparseable": row["unparseable"], "max_new_tokens": MAX_NEW_TOKENS,
        "correct_ids": [a["id"] for a in answers if a["correct"] is True], "data_report": data_report,
        "loss": losses, "wall_s": round(time.perf_counter() - began, 1), "command": command(),
        "commit": commit(), "machine": machine(), "device": device(),
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
        records = load_records(PAPER_FILES["paper_feedback"], task, rationale_path=PAPER_FILES["paper_rationale"])
    elif (corpus := work / "own-corpus" / "committee.jsonl").exists():
        records = load_records(corpus, task)
    else:
        return None
    teacher = unit.train.get("teacher", "mixed")
    if teacher not in ("mixed", "all"):  # one teacher's data: only its requests were needed
        records = [r | {"feedback": only(r["feedback"], teacher), "rationales": only(r["rationales"], teacher)}
                   for r in records]
    filter = unit.train.get("filter") or run_filter(map(recorded_filter, records), unit.name)
    total = data_cost(records, load_prices(PRICES[unit.source]), filter, task).total
    return {"requests": total.requests, "input_tokens": total.input_tokens, "output_tokens": total.output_tokens,
            "usd": round(total.usd, 4), "prices": PRICES[unit.source], "filter": filter}


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


def train_config(unit: Unit, args: ExperimentConfig, work: Path) -> TrainConfig:
    values = dataclasses.asdict(TrainConfig()) | BUDGET | unit.train | {"out": str(work / unit.name / "train")}
    if unit.source == "paper":
        values |= PAPER_FILES
    else:
        values["committee"] = str(own_corpus(args, work) / "committee.jsonl")
    if args.max_steps:
        values["max_steps"] = args.max_steps
    return make_config(TrainConfig, values, source=f"experiment unit {unit.name}")


def own_corpus(args: ExperimentConfig, work: Path) -> Path:
    """Mine SmolLM2's SVAMP train mistakes into the experiment's own folder and ask the offline committee; both
    resume, so the second unit finds the work done."""
    out = work / "own-corpus"
    generate(GenConfig(task="svamp", teachers="offline", engine=args.engine, batch_size=args.batch_size,
                       max_new_tokens=MAX_NEW_TOKENS, limit=args.train_limit, out=str(out)))
    return out


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
