"""`make experiment`: does FAIR distillation help a real student? One table, same seeds, every variant.

    .venv/bin/python -m fair.eval.experiment                       # the full run (hours on a 2-core CPU)
    .venv/bin/python -m fair.eval.experiment --limit 40 --max-steps 4 --test-limit 20 --out data/exp-smoke

SmolLM2-135M-Instruct mines its mistakes on the SVAMP train split, the offline committee (a simulator)
answers them, and the student is trained once per variant, then evaluated on the whole SVAMP test split:

    no training | single teacher (raw) | mixed, peer-reviewed (FAIR) | mixed, no review | alpha 0 | alpha 1

Each stage resumes, so an interrupted experiment continues where it stopped. The table goes to
<out>/results.md (and to docs/results.md with --publish) with the exact commands behind each row.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shlex
import sys
import time
from pathlib import Path

from fair.config import make_config
from fair.eval.evaluate import EvalConfig, evaluate
from fair.gen.pipeline import GenConfig, generate
from fair.train.train import TrainConfig, train

# name -> (description, TrainConfig overrides)
VARIANTS = {
    "single-careful": ("single teacher (careful), raw", {"teacher": "careful"}),
    "mixed": ("mixed, peer-reviewed (FAIR)", {"teacher": "mixed"}),
    "mixed-no-review": ("mixed, no peer review", {"teacher": "no-review"}),
    "mixed-alpha0": ("mixed, alpha = 0 (rationales only)", {"teacher": "mixed", "alpha": 0.0}),
    "mixed-alpha1": ("mixed, alpha = 1 (feedback only)", {"teacher": "mixed", "alpha": 1.0}),
}


def run(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    timings: dict[str, float] = {}
    if not args.skip_gen:
        began = time.perf_counter()
        generate(GenConfig(task="svamp", teachers="offline", limit=args.limit, engine=args.engine,
                           batch_size=args.batch_size))
        timings["mine + committee"] = time.perf_counter() - began

    def score(name: str, model: str) -> dict:
        began = time.perf_counter()
        [row] = evaluate(EvalConfig(task=("svamp",), model=model, engine=args.engine, batch_size=args.batch_size,
                                    limit=args.test_limit,
                                    out=str(out / name / "eval")))
        timings[f"evaluate {name}"] = time.perf_counter() - began
        return row

    rows = [("no-training", "no training", score("no-training", "smollm2-135m"), None)]
    base = TrainConfig()
    for name, (description, overrides) in VARIANTS.items():
        values = dataclasses.asdict(base) | {"epochs": args.epochs, "max_steps": args.max_steps, "lora": True,
                                             "lr": args.lr, "pack": True, "max_length": 384, "micro_batch_size": 8,
                                             "schedule": "cosine", "seed": args.seed, "out": str(out / name)}
        config = make_config(TrainConfig, values | overrides, source=f"experiment variant {name}")
        began = time.perf_counter()
        final = train(config)
        timings[f"train {name}"] = time.perf_counter() - began
        rows.append((name, description, score(name, str(final)), config))
    page = write_results(out / "results.md", rows, args, timings)
    if args.publish:
        Path("docs/results.md").write_text(page.read_text())
    return page


def write_results(path: Path, rows: list, args: argparse.Namespace, timings: dict[str, float]) -> Path:
    baseline = rows[0][2]["accuracy"]
    lines = ["# Does FAIR distillation help SmolLM2-135M on SVAMP?", "",
             f"Student SmolLM2-135M-Instruct; teachers: the offline committee (a simulator answering from the gold "
             f"solutions with set error rates; `configs/teachers/offline.yaml`); test: SVAMP test "
             f"({rows[0][2]['total']} questions), greedy decoding, our grader. Training: LoRA r16 on every linear "
             f"layer, packing, lr {args.lr}, {args.epochs} epoch(s){f', at most {args.max_steps} steps' if args.max_steps else ''}, "
             f"batch 8, seed {args.seed}.", "", f"Trained and evaluated on: {machine()}.", "",
             "| variant | accuracy | correct | change vs no training | unparseable |", "| --- | ---: | ---: | ---: | ---: |"]
    for _, description, row, _ in rows:
        lines.append(f"| {description} | {row['accuracy']:.1%} | {row['correct']}/{row['total']} | "
                     f"{(row['accuracy'] - baseline) * 100:+.1f} pt | {row['unparseable']} |")
    lines += ["", "## Commands", "", "```bash",
              ".venv/bin/python -m fair.eval.experiment " + shlex.join(sys.argv[1:]), "# which runs, per variant:",
              f"fair gen --task svamp --teachers offline{f' --limit {args.limit}' if args.limit else ''}",
              f"fair eval --task svamp --out {args.out}/no-training/eval"]
    for name, _, _, config in rows[1:]:
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(dataclasses.asdict(config).items())
                         if v != getattr(TrainConfig(), k) and k != "out")
        lines += [f"fair train {flags} --out {args.out}/{name}",
                  f"fair eval --task svamp --model {args.out}/{name}/final --out {args.out}/{name}/eval"]
    lines += ["```", "", "## Time", "", "| stage | seconds |", "| --- | ---: |"]
    lines += [f"| {stage} | {seconds:.0f} |" for stage, seconds in timings.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (bf16 autocast, transformers engine), torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/experiment")
    parser.add_argument("--limit", type=int, default=None, help="SVAMP train questions to mine (default all 700)")
    parser.add_argument("--test-limit", type=int, default=None, help="SVAMP test questions (default all 300)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--batch-size", type=int, default=32, help="transformers engine: prompts per batch")
    parser.add_argument("--skip-gen", action="store_true",
                        help="use the corpus already in data/svamp/smollm2-135m (made on another machine)")
    parser.add_argument("--publish", action="store_true", help="also write docs/results.md")
    run(parser.parse_args())


if __name__ == "__main__":  # vLLM spawns processes
    main()
