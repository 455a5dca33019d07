"""make bench-train: our trainer beside TRL's SFTTrainer (and ZeRO-2), same examples, step for step, in one run.

    .venv/bin/python bench/bench_train.py                            # SmolLM2-135M, max_length 512, 3 rounds
    .venv/bin/python bench/bench_train.py --repeats 5 --max-steps 4 --pairs packing --no-zero
    .venv/bin/python bench/bench_train.py --dry-run                  # print the plan and commands, run nothing

Workload: the paper's real SVAMP feedback/rationale files (seed/ under fair.tasks.default_data_dir()),
tokenized once by train.data, batch 8 in micro-batches of 4, full fine-tuning, lr 1e-5 constant, AdamW,
clipping 1.0, seed 0. Every run is its own subprocess with a fresh folder. Pairs, each run in alternating order,
`--repeats` rounds (the machine is shared: a ratio from one round is noisy, so the median over rounds is the figure):

    padding: ours (python -m train.train)  vs TRL SFTTrainer, padded micro-batches            (fp32 on a CPU)
    packing: ours --pack (a micro-batch in one row, per-example attention: train/varlen.py; flash-attn where
             installed)                          vs TRL padding_free (one row, a block-diagonal mask on sdpa)
    compiled: ours --pack --compile (torch.compile per decoder layer)   vs the same TRL padding_free run
    bf16:    the packing pair in bf16 autocast, fp32 master weights and optimizer state on both sides (TRL's
             own default, SFTConfig bf16=True); also ours bf16 against ours fp32 (packing)

On a GPU every run is bf16 (TRL's and ours). TRL runs in its own venv (.cache/bench-venvs/trl: torch first,
then trl and our transformers version; see bench/peers/trl_peer.py for its settings) on the examples our trainer
consumes, in its order, so that both see the same micro-batches and the same token ids, with completion-only
loss. TRL's packing proper also re-batches the data into rows of max_length (other steps); padding-free is the
layout it packs into. Then, once, ZeRO-2 (configs/deepspeed/zero2.json) with --zero-procs processes (torchrun;
on a CPU gloo, DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1 each) against the first round's "ours padding".

Measured, the same way on both sides: the wall time between the "step i/N" lines each trainer prints (step 1 is
warm-up, excluded), so a step's time includes everything its loop does; target tokens/s = the supervised tokens
of steps 2..N / that time. Peak memory: VmHWM (the kernel's peak RSS) of the process tree, polled every 0.1 s,
up to the last step (ours then writes a checkpoint and exports; TRL saves nothing); ZeRO: the sum over workers.
On a GPU also the peak GPU memory nvidia-smi shows for the tree. Loss: Trainer logs the mean CE over a step's
target tokens; ours logs alpha * mean(feedback) + (1 - alpha) * mean(rationale), so the bench rebuilds our
token mean from its two per-kind means. The tolerances (bench/train_report.py, stated before any bf16 run):
same precision, step 1 within FP32_TOL[0], every step within FP32_TOL[1] (the objectives weigh tokens
differently, so the updates differ slightly); a bf16 run against fp32 or two bf16 trainers, BF16_TOL.
Results: data/bench/train.json; `--render JSON` writes docs/bench/train.md's tables from one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.provenance import commit, load_average, machine
from bench.train_report import BF16_TOL, FP32_TOL, render, report
from bench.train_runs import ROOT, RunSpec, run
from fair.config import make_config
from fair.jsonl import write_json
from fair.models import resolve_model
from fair.tasks import default_data_dir
from train.data import FEEDBACK
from train.step import my_micro_batches
from train.train import Dist, TrainConfig, load_data, step_plan

PY = Path(sys.executable)
TRL_REQUIREMENTS = ["trl==1.16.0"]  # with our transformers pinned beside it and torch installed first
PAIRS = {"padding": ("ours padding", "TRL padding"), "packing": ("ours packing", "TRL padding-free"),
         "compiled": ("ours packing compiled", "TRL padding-free"),
         "bf16": ("ours packing bf16", "TRL padding-free bf16")}
BF16_AGAINST_FP32 = ("ours packing bf16", "ours packing")  # what bf16 autocast buys ours, and what it moves


def prepare(config: TrainConfig, steps: int, path: Path) -> list[dict]:
    """Per step: target tokens by kind, as our trainer builds the step. Writes the TRL peer's examples to `path`:
    the step's micro-batches, in order, as our trainer consumes them in one process."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.student))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    with contextlib.redirect_stdout(io.StringIO()):
        items = load_data(config, tokenizer, Dist())
    per_epoch, out, rows = len(items) // config.batch_size, [], []
    for step in range(steps):
        batch = [items[i] for i in step_plan(len(items), config, step, per_epoch)]
        counts = {"feedback": 0, "rationale": 0}
        for item in batch:
            counts["feedback" if item.kind == FEEDBACK else "rationale"] += sum(
                x != -100 for x in item.labels
            )
        out.append(counts | {"target": sum(counts.values())})
        for chunk in my_micro_batches(batch, config.micro_batch_size, Dist()):
            rows += [
                {"input_ids": i.input_ids, "completion_mask": [int(x != -100) for x in i.labels]}
                for i in chunk
            ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def ensure_trl_venv() -> Path:
    """.cache/bench-venvs/trl: torch (the CPU wheel on a CPU host, as `make setup` installs it) first, then TRL
    with torch and transformers held at our versions; reused while those requirements match."""
    import transformers

    venv = ROOT / ".cache" / "bench-venvs" / "trl"
    python, stamp = venv / "bin" / "python", venv / ".bench-requirements"
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    wanted = " ".join(pins + TRL_REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    pip = [str(python), "-m", "pip", "install", "-q"]
    try:
        subprocess.run(
            [shutil.which("python3") or "python3", "-m", "venv", str(venv)], check=True, timeout=300
        )
        subprocess.run([*pip, pins[0]], check=True, timeout=1800)
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
            constraints.write(
                "\n".join(pins) + "\n"
            )  # trl must not move torch (a CUDA build) or transformers
            constraints.flush()
            subprocess.run(
                [*pip, "-c", constraints.name, *pins[1:], *TRL_REQUIREMENTS], check=True, timeout=1800
            )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise SystemExit(
            f"bench_train.py: could not install TRL's venv at {venv} ({e}); --no-trl runs ours only"
        ) from None
    stamp.write_text(wanted)
    return python


def specs(args, train_args: list[str], trl_python: Path, data: Path, model: str) -> dict[str, RunSpec]:
    ours = [str(PY), "-m", "train.train", *train_args]
    ours_bf16 = [*(a if not a.startswith("dtype=") else "dtype=bfloat16" for a in ours)]
    accumulation = args.batch_size // args.micro_batch_size
    trl = [str(trl_python), str(ROOT / "bench" / "peers" / "trl_peer.py"), "--data", str(data), "--model", model,
           "--micro-batch-size", str(args.micro_batch_size), "--accumulation", str(accumulation),
           "--max-steps", str(args.max_steps), "--max-length", str(args.max_length), "--seed", str(args.seed),
           *(["--bf16"] if torch.cuda.is_available() else [])]
    torchrun = [str(PY.with_name("torchrun")), "--nproc_per_node", str(args.zero_procs), "-m", "train.train",
                "--deepspeed", str(ROOT / "configs" / "deepspeed" / "zero2.json"), *train_args]
    zero_env = {} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    return {
        "ours padding": RunSpec("ours", ours),
        "ours packing": RunSpec("ours", [*ours, "--pack"]),
        "ours packing compiled": RunSpec("ours", [*ours, "--pack", "--compile"]),
        "TRL padding": RunSpec("trl", trl),
        "TRL padding-free": RunSpec("trl", [*trl, "--padding-free"]),
        "ours packing bf16": RunSpec("ours", [*ours_bf16, "--pack"]),
        "TRL padding-free bf16": RunSpec("trl", [*trl, "--padding-free", *([] if "--bf16" in trl else ["--bf16"])]),
        f"ours ZeRO-2 x{args.zero_procs}": RunSpec("ours", torchrun, args.zero_procs, zero_env),
    }


def token_mean_losses(result: dict, tokens: list[dict]) -> list[float]:
    """Per step, the mean CE over its target tokens: TRL logs it; ours logs it by kind."""
    if result["side"] == "trl":
        return [r["loss"] for r in result["log"]]
    out = []
    for r, t in zip(result["log"], tokens, strict=False):
        total = sum(r[f"{k}_loss"] * t[k] for k in ("feedback", "rationale") if t[k])
        out.append(total / t["target"])
    return out


def summarize(result: dict, tokens: list[dict]) -> None:
    times = result["step_line_s"]
    if len(times) != len(tokens):
        raise SystemExit(f"{result['name']}: {len(times)} step lines for {len(tokens)} steps")
    measured = times[-1] - times[0]
    cpu = result["step_line_cpu_s"]
    tokens_after_1 = sum(t["target"] for t in tokens[1:])
    result |= {
        "measured_s": measured,
        "s_per_step": measured / (len(times) - 1),
        "target_tok_s": tokens_after_1 / measured,
        "target_tok_per_cpu_s": tokens_after_1 / (cpu[-1] - cpu[0]) if len(cpu) == len(times) else None,
        "losses": token_mean_losses(result, tokens),
    }


def loss_check(a: list[float], b: list[float], tolerance: tuple[float, float] = FP32_TOL) -> dict:
    """Relative loss differences: step 1 and the most over the steps, against (step 1, every step) tolerances."""
    rel = [abs(x - y) / abs(y) for x, y in zip(a, b, strict=True)]
    return {
        "step1_rel_diff": rel[0],
        "max_rel_diff": max(rel),
        "tolerance": list(tolerance),
        "ok": rel[0] <= tolerance[0] and max(rel) <= tolerance[1],
    }


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(
        prog="bench_train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--student", default="smollm2-135m")
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--repeats", type=int, default=3, help="rounds of each pair, alternating which side goes first"
    )
    p.add_argument("--pairs", default="padding,packing,bf16", help=f"comma-separated, of {', '.join(PAIRS)}")
    p.add_argument(
        "--zero-procs", type=int, default=torch.cuda.device_count() or 2, help="default: every GPU, or 2"
    )
    p.add_argument("--no-zero", action="store_true", help="skip the ZeRO-2 run")
    p.add_argument(
        "--no-trl", action="store_true", help="ours only (a host where TRL's venv cannot be installed)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    p.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    p.add_argument("--out", default=str(ROOT / "data" / "bench" / "train.json"))
    p.add_argument("--render", metavar="JSON", help="only write docs/bench/train.md from a results file, run nothing")
    args = p.parse_args(argv)
    pairs = [x for x in args.pairs.split(",") if x]
    if not pairs or set(pairs) - set(PAIRS):
        p.error(f"--pairs takes {', '.join(PAIRS)}, got {args.pairs!r}")
    if args.max_steps < 2 or args.repeats < 1 or args.zero_procs < 1:
        p.error("--max-steps must be >= 2 (step 1 is warm-up), --repeats and --zero-procs >= 1")
    if args.batch_size % (args.micro_batch_size * args.zero_procs):
        p.error(
            f"--batch-size {args.batch_size} must split into micro-batches of {args.micro_batch_size} over "
            f"{args.zero_procs} ZeRO processes"
        )
    args.pairs = pairs
    return args


def plan(args, zero_name: str) -> list[tuple[int, str]]:
    """(round, run name) in order: every run once a round (a TRL run two pairs share, too), odd rounds in
    reverse, so each pair alternates which side runs first; ZeRO once, after round 0."""
    names = [n for pair in args.pairs for n in (PAIRS[pair][:1] if args.no_trl else PAIRS[pair])]
    names = list(dict.fromkeys(names))
    order = []
    for r in range(args.repeats):
        order += [(r, n) for n in (names if r % 2 == 0 else names[::-1])]
        if r == 0 and not args.no_zero:
            order.append((0, zero_name))
    return order


def side_by_side(ours: list[dict], other: list[dict]) -> dict:
    """Round by round ratios of two runs and their medians."""
    each = [o["target_tok_s"] / t["target_tok_s"] for o, t in zip(ours, other, strict=True)]
    rss = [o["peak_rss_gib"] / t["peak_rss_gib"] for o, t in zip(ours, other, strict=True)]
    per_cpu = [o["target_tok_per_cpu_s"] / t["target_tok_per_cpu_s"] for o, t in zip(ours, other, strict=True)
               if o["target_tok_per_cpu_s"] and t["target_tok_per_cpu_s"]]
    return {"tok_s_each": each, "tok_s_median": statistics.median(each), "tok_per_cpu_s_each": per_cpu,
            "tok_per_cpu_s_median": statistics.median(per_cpu) if per_cpu else None,
            "rss_each": rss, "rss_median": statistics.median(rss)}


def compare(args, results: dict[str, list[dict]], zero_name: str) -> tuple[dict, dict]:
    """Per pair, ours / TRL round by round and their medians, and the loss checks (ZeRO against one process;
    compiled against eager, when both ran)."""
    ratios, checks = {}, {}
    for pair in [] if args.no_trl else args.pairs:
        ours, trl = PAIRS[pair]
        tolerance = BF16_TOL if pair == "bf16" else FP32_TOL
        ratios[f"{ours} / {trl}"] = side_by_side(results[ours], results[trl])
        checks[f"{ours} / {trl}"] = loss_check(results[ours][0]["losses"], results[trl][0]["losses"], tolerance)
    for (a, b), tolerance in (((PAIRS["compiled"][0], PAIRS["packing"][0]), FP32_TOL), (BF16_AGAINST_FP32, BF16_TOL)):
        if a in results and b in results:
            ratios[f"{a} / {b}"] = side_by_side(results[a], results[b])
            checks[f"{a} / {b}"] = loss_check(results[a][0]["losses"], results[b][0]["losses"], tolerance)
    if "ours padding" in results and zero_name in results:
        checks[f"{zero_name} / ours padding"] = loss_check(
            results[zero_name][0]["losses"], results["ours padding"][0]["losses"]
        )
    return ratios, checks


def train_values(args) -> dict:
    """Our trainer's settings (key=value overrides), the same for every run of the bench."""
    seed = default_data_dir() / "seed"
    return {
        "student": args.student,
        "paper_feedback": str(seed / "Llama-2-7b-chat-hf_svamp_feedback_round0.json"),
        "paper_rationale": str(seed / "Llama-2-7b-chat-hf_svamp_rationale_round0.json"),
        "max_length": args.max_length,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "micro_batch_size": args.micro_batch_size,
        "seed": args.seed,
        # TRL's side runs in bf16 on GPUs only (--bf16 below): ours in the same precision, not `auto`'s choice
        "dtype": "bfloat16" if torch.cuda.is_available() else "float32",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(f"wrote {render(Path(args.render), ROOT / 'docs' / 'bench' / 'train.md')}")
        return 0
    values = train_values(args)
    train_args = [f"{k}={v}" for k, v in values.items()]
    workdir = Path("RUN_DIR" if args.dry_run else tempfile.mkdtemp(prefix="bench-train-"))
    data = workdir / "trl-examples.jsonl"
    trl_python = ROOT / ".cache" / "bench-venvs" / "trl" / "bin" / "python"
    all_specs = specs(args, train_args, trl_python, data, str(resolve_model(args.student)))
    zero_name = next(n for n in all_specs if "ZeRO" in n)
    order = plan(args, zero_name)
    if args.dry_run:
        for r, name in order:
            print(f"round {r}: {name}: {shlex.join(all_specs[name].command)} --out RUN_DIR")
        return 0
    tokens = prepare(
        make_config(TrainConfig, values | {"out": str(workdir / "data")}, "bench"), args.max_steps, data
    )
    if not args.no_trl:
        ensure_trl_venv()
    print(
        f"{args.student}, max_length {args.max_length}, batch {args.batch_size} (micro {args.micro_batch_size}), "
        f"{args.max_steps} steps (step 1 warm-up), {args.repeats} round(s); {os.cpu_count()} CPUs; "
        f"target tokens per step {[t['target'] for t in tokens]}; run folders in {workdir}"
    )
    started = {"commit": commit(), "load_average_before": load_average()}  # the commit that ran, not later edits
    results: dict[str, list[dict]] = {}
    for i, (r, name) in enumerate(order):
        print(f"\n== round {r}: {name}", flush=True)
        result = run(name, all_specs[name], workdir / f"run{i}", args.max_steps)
        summarize(result, tokens)
        results.setdefault(name, []).append(result)
    ratios, checks = compare(args, results, zero_name)
    report(results, ratios, checks)
    write_json(
        Path(args.out),
        {
            "args": vars(args),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "step_tokens": tokens,
            "runs": results,
            "ratios": ratios,
            "checks": checks,
            "machine": machine(),
            "load_average_after": load_average(),
        }
        | started,
    )
    print(f"\nwrote {args.out}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(c["ok"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
