"""docs/bench-gpu.md from the JSON that bench/gpu.sh's steps wrote: what was run, on which GPU, and the figures.

    .venv/bin/python bench/gpu_report.py --gpu "NVIDIA H200, 143771 MiB, 570.x" --mine data/bench/mine.json \
        --train data/bench/train-gpu.json [--cpu-train data/bench/train.json] --out docs/bench-gpu.md

bench_mine's rows are rendered as they are (every key a column), so that a change of its fields needs no change
here. bench_train's runs are summarized as its own report prints them: medians over rounds, ratios, loss checks.
A missing --cpu-train file is said so in the document, not an error; a missing --mine or --train file is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def table(header: list[str], rows: list[list]) -> list[str]:
    def cell(x) -> str:
        return (
            f"{x:,.3g}"
            if isinstance(x, float) and abs(x) < 10
            else f"{x:,.1f}"
            if isinstance(x, float)
            else str(x)
        )

    return [
        f"| {' | '.join(header)} |",
        f"|{' --- |' * len(header)}",
        *(f"| {' | '.join(map(cell, r))} |" for r in rows),
    ]


def mine_section(mine: dict) -> list[str]:
    rows = mine.get("rows", [])
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["## Mining (bench/bench_mine.py)", ""]
    lines += [f"Settings: {json.dumps(mine.get('settings', {}))}"]
    if "matmul_gflops" in mine:
        lines += [
            f"Matmul ceiling: {mine['matmul_gflops']} GFLOP/s, {mine.get('ceiling_tokens_per_s')} tokens/s."
        ]
    lines += ["", *table(keys, [[r.get(k, "") for k in keys] for r in rows]), ""]
    for name, a in mine.get("agreement", {}).items():
        lines.append(f"- {name}: {a.get('identical_texts')}/{a.get('questions')} identical completions")
    return [*lines, ""]


def train_section(train: dict, title: str) -> list[str]:
    args = train["args"]
    lines = [
        f"## {title}",
        "",
        f"Device: {train.get('gpu') or 'CPU'} ({train.get('cpus')} CPUs), torch "
        f"{train.get('torch')}; max_length {args['max_length']}, batch {args['batch_size']} (micro "
        f"{args['micro_batch_size']}), {args['max_steps']} steps (step 1 warm-up), {args['repeats']} rounds.",
        "",
    ]
    rows = []
    for name, runs in train["runs"].items():

        def med(key, runs=runs):
            values = [r[key] for r in runs if r.get(key) is not None]
            return statistics.median(values) if values else "-"

        rows.append(
            [
                name,
                len(runs),
                med("target_tok_s"),
                med("s_per_step"),
                med("peak_rss_gib"),
                med("peak_gpu_gib"),
            ]
        )
    lines += table(["run", "rounds", "target tok/s (median)", "s/step", "peak RSS GiB", "peak GPU GiB"], rows)
    lines.append("")
    for key, r in train.get("ratios", {}).items():
        each = ", ".join(f"{x:.3f}" for x in r["tok_s_each"])
        per_cpu = r.get("tok_per_cpu_s_median")
        lines.append(
            f"- {key}: tokens/s {r['tok_s_median']:.3f}x (rounds {each}), peak RSS {r['rss_median']:.3f}x"
            + (f", tokens per CPU-second {per_cpu:.3f}x" if per_cpu else "")
        )
    for key, c in train.get("checks", {}).items():
        lines.append(
            f"- loss {key}: step 1 rel diff {c['step1_rel_diff']:.1e}, max {c['max_rel_diff']:.1e}: "
            f"{'ok' if c['ok'] else 'FAIL'}"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", required=True, help="what nvidia-smi calls it")
    p.add_argument("--mine", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--cpu-train", help="bench_train's JSON from a CPU run, shown beside")
    p.add_argument("--out", required=True)
    p.add_argument("--commit", default="unknown", help="the commit measured (bench/gpu.sh gives the checkout's)")
    args = p.parse_args(argv)
    loaded = []
    for name in (args.mine, args.train):
        try:
            loaded.append(json.loads(Path(name).read_text()))
        except (OSError, ValueError) as e:
            print(f"gpu_report: {name}: {e}", file=sys.stderr)
            return 2
    mine, train = loaded
    lines = [
        "# Benchmarks on a GPU",
        "",
        f"GPU: {args.gpu}. Commit `{args.commit}`, written by `bench/gpu.sh` on "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; every ratio was measured side by side in that one run.",
        "",
    ]
    lines += mine_section(mine) + train_section(
        train, "Training: ours vs TRL SFTTrainer, and ZeRO-2 (bench/bench_train.py)"
    )
    cpu = Path(args.cpu_train) if args.cpu_train else None
    if cpu and cpu.exists():
        lines += train_section(json.loads(cpu.read_text()), f"The same on this host's CPU ({cpu})")
    else:
        lines += [
            "## CPU figures",
            "",
            "See the [benchmarks](benchmarks.md#training) page (this host had no CPU run of "
            "bench_train.py to show beside).",
            "",
        ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
