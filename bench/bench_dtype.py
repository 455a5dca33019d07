"""make bench-dtype: does bfloat16 change what the student answers, or how it trains? float32 and bf16, paired.

    .venv/bin/python bench/bench_dtype.py                     # all of it: about an hour on one thread
    .venv/bin/python bench/bench_dtype.py --parts eval        # only the evaluation pair
    .venv/bin/python bench/bench_dtype.py --limit 10 --steps 3 --demo-limit 12 --long-limit 16   # a smoke run

Evaluation (part `eval`): the base student (SmolLM2-135M-Instruct) on the 300 SVAMP test questions through
`fair eval`'s code path (eval/evaluate.py) with the experiment's settings (cli/experiment.py: the transformers
engine, 64 rows decoding together, 256 new tokens, greedy), once in float32 and once in bfloat16. Paired on the
questions: accuracy each, agreement (the same extracted answer) and identical completions, the difference with
its 95% paired-bootstrap interval and McNemar's exact p (eval/results.py's, as in docs/results.md), wall time
each. bf16 changes accuracy beyond noise when the interval excludes 0 or p < 0.05: then evaluation keeps float32
under `auto` (fair/dtype.py).

Training (parts `train` and `long`): the demo's run (configs/train/demo.yaml: LoRA, packed rows, lr 3e-3 cosine,
batch 8, seed 0) on the demo's data, made as `make demo` makes it (gen/pipeline.py's generate: mining and the
offline committee on the first --demo-limit SVAMP train questions, the student in auto's dtype, as eval/demo.py),
in float32 and in bf16 autocast (fp32 master weights and optimizer): same seed, same data, same batches; every
step's loss from the runs' log.jsonl. The demo has about 24 steps, all of which run (--steps caps at 50); so
`long` runs the same recipe for --steps steps on the data of --long-limit questions (the demo at --limit 220).

Tolerance for the losses (stated before any run): bf16 keeps 8 significant bits, so every rounding is off by at
most 2^-8 = 0.39% of the value; autocast rounds each matmul's inputs and outputs (products summed in fp32), and
the loss is a mean over thousands of target tokens of a cross-entropy taken in fp32, whose rounding errors mostly
cancel. Step 1 (same weights, same batch, one forward pass apart) must agree within STEP1_TOL, relative: a few
roundings' worth. From step 2 on, the two runs' weights have taken different updates (the gradients differ by
the same relative amount, and Adam normalises each coordinate's step, so a small gradient difference is not
shrunk), and the gap may grow over the steps: the mean relative difference over the steps must stay within
CURVE_MEAN_TOL and every step within CURVE_MAX_TOL. Beside them, the fp32 curve's own movement (the mean and
median |loss change| from one step to the next, different batches) as a scale for what a difference means.

Work folders: data/bench/dtype/ (evaluations and training runs start fresh; the mined data resumes). The JSON
(machine, commit, torch, CPU flags, every dtype's reason, every number) goes to docs/bench/dtype-parity.json, or
data/bench/dtype-smoke.json when --limit, --steps or --demo-limit shortens the run; it is rewritten after
each part, so a stopped run keeps what finished. A full run then writes the page docs/bench/dtype.md from it
(--render rebuilds the page alone), with docs/bench/dtype-notes.md, a hand-written reading, appended.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench.provenance import commit, machine
from cli.experiment import BATCH_SIZE, ENGINE, MAX_NEW_TOKENS
from cli.pipeline import GenConfig, generate
from eval.evaluate import EvalConfig, evaluate
from eval.results import RESAMPLES, mcnemar_exact, paired_bootstrap
from fair.config import load_yaml, make_config
from fair.errors import FairError
from fair.jsonl import write_json
from fair.models import DEFAULT_STUDENT, smollm2_dir
from fair.records import finished_answers
from fair.tasks import get_task
from train.train import TrainConfig, train

PAIR = ("float32", "bfloat16")  # the reference first
DEMO_CONFIG = Path("configs/train/demo.yaml")
WORK = Path("data/bench/dtype")
FULL_OUT, SMOKE_OUT = Path("docs/bench/dtype-parity.json"), Path("data/bench/dtype-smoke.json")
PAGE = Path("docs/bench/dtype.md")  # generated from FULL_OUT
NOTES = Path("docs/bench/dtype-notes.md")  # a hand-written reading of the numbers, appended to the page if present
STEP1_TOL = 1e-2  # relative, step 1: one forward pass in bf16 against fp32 (2.5 roundings of 2^-8)
CURVE_MEAN_TOL = 2e-2  # relative, mean over the steps: the runs' weights drift apart after step 1
CURVE_MAX_TOL = 5e-2  # relative, any single step
NOISE = 0.05  # significance level of the accuracy verdict


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: the base student in both dtypes, paired on the questions

def eval_pair(args: argparse.Namespace) -> dict:
    runs = {dtype: eval_run(dtype, args) for dtype in PAIR}
    order = [e.id for e in get_task("svamp").load("test")[: args.limit]]
    fp32, bf16 = (runs[d].pop("answers") for d in PAIR)
    a = np.array([fp32[i].correct is True for i in order])
    b = np.array([bf16[i].correct is True for i in order])
    diff, low, high = paired_bootstrap(b, a)
    p = mcnemar_exact(b, a)
    return {
        "questions": len(order), "runs": runs,
        "agreement": round(sum(fp32[i].extracted == bf16[i].extracted for i in order) / len(order), 4),
        "identical_completions": round(sum(fp32[i].prediction == bf16[i].prediction for i in order) / len(order), 4),
        "only_float32_right": int((a & ~b).sum()), "only_bfloat16_right": int((~a & b).sum()),
        "difference_bf16_minus_fp32": round(diff, 4), "ci95": [round(low, 4), round(high, 4)],
        "bootstrap_resamples": RESAMPLES, "mcnemar_p": round(p, 4),
        "beyond_noise": bool(p < NOISE or low > 0 or high < 0),
    }


def eval_run(dtype: str, args: argparse.Namespace) -> dict:
    out = WORK / f"eval-{dtype}"
    shutil.rmtree(out, ignore_errors=True)  # fresh: a resumed evaluation would time only its rest
    began = time.perf_counter()
    [row] = evaluate(EvalConfig(task=("svamp",), model=DEFAULT_STUDENT, engine=ENGINE, batch_size=BATCH_SIZE,
                                max_new_tokens=MAX_NEW_TOKENS, dtype=dtype, limit=args.limit, out=str(out)))
    wall = time.perf_counter() - began
    return {
        "accuracy": row["accuracy"], "correct": row["correct"], "total": row["total"],
        "unparseable": row["unparseable"], "generated_tokens": row["generated_tokens"],
        "wall_s": round(wall, 1), "generate_s": row["seconds"],  # wall: engine start-up included
        "tokens_per_s": round(row["generated_tokens"] / row["seconds"], 1), "dtype": row["dtype"],
        "answers": finished_answers(out / "svamp-test" / "predictions.jsonl"),
    }


# ----------------------------------------------------------------------------------------------------------------
# Training: the demo's recipe in both dtypes, step for step

def demo_data(limit: int, name: str) -> Path:
    """The demo's committee data on the first `limit` train questions, as eval/demo.py makes it; a snapshot of
    committee.jsonl, so that a later, larger run in the same folder does not change what this pair trained on."""
    folder = WORK / f"gen-{limit}"
    made = sorted(WORK.glob("gen-*"), key=lambda p: int(p.name.removeprefix("gen-")))
    smaller = [p for p in made if int(p.name.removeprefix("gen-")) < limit]
    if not folder.exists() and smaller:  # the first questions' mistakes and replies are the same: resume from them
        shutil.copytree(smaller[-1], folder)
    generate(GenConfig(task="svamp", teachers="offline", limit=limit, engine=ENGINE, batch_size=BATCH_SIZE,
                       max_new_tokens=MAX_NEW_TOKENS, dtype="auto", filter="review", out=str(folder)))  # the demo's when recorded
    snapshot = WORK / f"committee-{name}.jsonl"
    shutil.copyfile(folder / "committee.jsonl", snapshot)
    return snapshot


def train_pair(name: str, committee: Path, questions: int, steps: int) -> dict:
    runs = {dtype: train_run(name, committee, dtype, steps) for dtype in PAIR}
    return {"train_questions": questions, "committee_records": sum(1 for _ in committee.open()),
            "config": str(DEMO_CONFIG), "max_steps": steps, "runs": runs,
            **loss_parity(runs["float32"]["losses"], runs["bfloat16"]["losses"])}


def train_run(name: str, committee: Path, dtype: str, steps: int) -> dict:
    out = WORK / f"train-{name}-{dtype}"
    shutil.rmtree(out, ignore_errors=True)  # fresh: no resumed checkpoint, and every step timed
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {"out": str(out), "committee": str(committee), "dtype": dtype, "max_steps": steps}
    config = make_config(TrainConfig, load_yaml(DEMO_CONFIG, names) | overrides, source=str(DEMO_CONFIG))
    began = time.perf_counter()
    train(config)
    wall = time.perf_counter() - began
    log = [json.loads(line) for line in (out / "log.jsonl").open()]
    summary = json.loads((out / "train_summary.json").read_text())
    return {"steps": len(log), "examples": summary["examples"], "wall_s": round(wall, 1),
            "train_s": summary["seconds_this_run"], "s_per_step": round(summary["seconds_this_run"] / len(log), 2),
            "dtype": summary["dtype"], "losses": [round(r["loss"], 6) for r in log]}


def loss_parity(fp32: list[float], bf16: list[float]) -> dict:
    a, b = np.array(fp32), np.array(bf16)
    absolute, relative = np.abs(b - a), np.abs(b - a) / np.abs(a)
    moves = np.abs(np.diff(a))  # the fp32 curve's own steps, different batches; the median skips the first drop
    within = bool(relative[0] <= STEP1_TOL and relative.mean() <= CURVE_MEAN_TOL and relative.max() <= CURVE_MAX_TOL)
    return {
        "step1_abs_diff": round(float(absolute[0]), 6), "step1_rel_diff": round(float(relative[0]), 6),
        "max_abs_diff": round(float(absolute.max()), 6), "mean_abs_diff": round(float(absolute.mean()), 6),
        "max_rel_diff": round(float(relative.max()), 6), "mean_rel_diff": round(float(relative.mean()), 6),
        "worst_step": int(relative.argmax()) + 1,
        "fp32_step_to_step_movement": round(float(moves.mean()), 6) if len(moves) else None,
        "fp32_step_to_step_median": round(float(np.median(moves)), 6) if len(moves) else None,
        "tolerance": {"step1_rel": STEP1_TOL, "mean_rel": CURVE_MEAN_TOL, "max_rel": CURVE_MAX_TOL},
        "within_tolerance": within,
    }


# ----------------------------------------------------------------------------------------------------------------
# The run: what it ran on, the parts in turn, the JSON after each

def run(args: argparse.Namespace, out: Path) -> dict:
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "commit": commit(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
              "student": DEFAULT_STUDENT, "eval_settings": {"engine": ENGINE, "batch_size": BATCH_SIZE,
                                                            "max_new_tokens": MAX_NEW_TOKENS, "greedy": True}}
    smollm2_dir()  # converted once into the model cache, outside every timed run
    if "eval" in args.parts:
        result["eval"] = eval_pair(args)
        write_json(out, result)
    if "train" in args.parts:
        result["train_demo"] = train_pair("demo", demo_data(args.demo_limit, "demo"), args.demo_limit, args.steps)
        write_json(out, result)
    if "long" in args.parts and args.long_limit:
        result["train_long"] = train_pair("long", demo_data(args.long_limit, "long"), args.long_limit, args.steps)
        write_json(out, result)
    return result


def markdown(result: dict, source: Path) -> list[str]:
    """The page: every figure from the JSON, with its commit and machine; then the hand-written notes, if any."""
    m = result["machine"]
    lines = ["# bfloat16 against float32: the student's accuracy and the demo's training losses", "",
             f"Generated by `python bench/bench_dtype.py --render` from `{source}`, which "
             f"`{result['command']}` wrote (`make bench-dtype`). Commit {result['commit']}; {m['cpu']}, {m['cores']} cores, "
             f"{m['torch_threads']} torch thread(s), torch {m['torch']}, transformers {m['transformers']}; CPU "
             f"flags {', '.join(m['cpu_flags'])}; `auto` chose {m['auto']['dtype']} ({m['auto']['reason']}).", ""]
    if ev := result.get("eval"):
        lines += eval_section(ev, result["eval_settings"])
    for key, title in (("train_demo", "The demo's training run"), ("train_long", "The demo's recipe on more data")):
        if t := result.get(key):
            lines += train_section(t, title)
    if NOTES.exists():
        lines += [NOTES.read_text().rstrip(), ""]
    return lines


def eval_section(ev: dict, settings: dict) -> list[str]:
    fp32, bf16 = (ev["runs"][d] for d in PAIR)
    low, high = ev["ci95"]
    verdict = ("**bf16 changes the accuracy beyond noise**: evaluation should keep float32 under `auto` "
               "(fair/dtype.py)." if ev["beyond_noise"]
               else "**bf16 does not change the accuracy beyond noise** (the interval includes 0 and p >= "
               f"{NOISE}); at this many discordant questions the interval still allows anything from "
               f"{low * 100:+.1f} to {high * 100:+.1f} points.")
    lines = [f"## The base student on {ev['questions']} SVAMP test questions", "",
             f"`fair eval`'s code path with the experiment's settings: engine {settings['engine']}, "
             f"{settings['batch_size']} rows decoding together, at most {settings['max_new_tokens']} new tokens, "
             "greedy. Wall time includes loading the model.", "",
             "| dtype | accuracy | correct | unparseable | generated tokens | tokens/s | wall s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for dtype, r in ev["runs"].items():
        lines.append(f"| {dtype} | {r['accuracy']:.1%} | {r['correct']}/{r['total']} | {r['unparseable']} | "
                     f"{r['generated_tokens']:,} | {r['tokens_per_s']} | {r['wall_s']} |")
    return lines + [
        "", f"bf16 minus fp32: {ev['difference_bf16_minus_fp32'] * 100:+.1f} points, 95% paired-bootstrap interval "
        f"[{low * 100:+.1f}, {high * 100:+.1f}] ({ev['bootstrap_resamples']:,} resamples), McNemar's exact "
        f"p = {ev['mcnemar_p']:.3g} ({ev['only_float32_right']} questions right in fp32 only, "
        f"{ev['only_bfloat16_right']} in bf16 only). The same extracted answer (or none in both) on "
        f"{ev['agreement']:.1%} of the questions, the identical completion on {ev['identical_completions']:.1%}: "
        "greedy decoding follows the larger logit, and where two are within bf16's rounding the completions part. "
        f"bf16 decoded {bf16['tokens_per_s'] / fp32['tokens_per_s']:.2f}x fp32's tokens/s.", "", verdict, ""]


def movement_sentence(t: dict) -> str:
    moved = t.get("fp32_step_to_step_median")
    return "" if moved is None else f" The fp32 loss itself moves by {moved:.4f} a step (median)."


def train_section(t: dict, title: str) -> list[str]:
    fp32, bf16 = (t["runs"][d] for d in PAIR)
    tol = t["tolerance"]
    lines = [f"## {title}: {fp32['steps']} steps, float32 and bf16 autocast", "",
             f"`{t['config']}` (at most {t['max_steps']} steps) on the demo's data from the first "
             f"{t['train_questions']} SVAMP train questions ({t['committee_records']} committee records, "
             f"{fp32['examples']} examples), same seed, same batches.", "",
             "| dtype | steps | s/step | first loss | last loss |", "| --- | ---: | ---: | ---: | ---: |"]
    for dtype, r in t["runs"].items():
        lines.append(f"| {dtype} | {r['steps']} | {r['s_per_step']} | {r['losses'][0]:.4f} | {r['losses'][-1]:.4f} |")
    lines += ["", f"|bf16 - fp32| over the steps: max {t['max_abs_diff']:.4f}, mean {t['mean_abs_diff']:.4f}; "
              f"relative: step 1 {t['step1_rel_diff']:.2e}, mean {t['mean_rel_diff']:.2e}, max "
              f"{t['max_rel_diff']:.2e} (step {t['worst_step']}).{movement_sentence(t)} Tolerance (relative, "
              f"stated before the run; why: bench/bench_dtype.py's docstring): step 1 <= {tol['step1_rel']}, mean <= {tol['mean_rel']}, "
              f"every step <= {tol['max_rel']}: **{'within' if t['within_tolerance'] else 'outside'}**. "
              f"bf16 took {bf16['s_per_step'] / fp32['s_per_step']:.2f}x fp32's time a step.", "",
              "| step | fp32 loss | bf16 loss | relative difference |", "| ---: | ---: | ---: | ---: |"]
    for step, (a, b) in enumerate(zip(fp32["losses"], bf16["losses"], strict=True), 1):
        lines.append(f"| {step} | {a:.4f} | {b:.4f} | {abs(b - a) / abs(a):.2e} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=("eval", "train", "long"), default=["eval", "train", "long"],
                        help="what to run, in this order (default: all three)")
    parser.add_argument("--limit", type=int, default=None, help="smoke runs: the first N test questions")
    parser.add_argument("--steps", type=int, default=50, help="training steps at most, per run")
    parser.add_argument("--demo-limit", type=int, default=100, help="train questions of the demo's data (make demo's)")
    parser.add_argument("--long-limit", type=int, default=220,
                        help="train questions of the `long` pair's data: enough for --steps steps; 0 skips it")
    parser.add_argument("--out", type=Path, default=None, help=f"default {FULL_OUT}, or {SMOKE_OUT} for a smoke run")
    parser.add_argument("--render", action="store_true", help=f"only rebuild {PAGE} from {FULL_OUT}")
    args = parser.parse_args(argv)
    if args.render:
        PAGE.write_text("\n".join(markdown(json.loads(FULL_OUT.read_text()), FULL_OUT)))
        print(f"wrote {PAGE}")
        return 0
    smoke = args.limit or args.steps != parser.get_default("steps") or \
        args.demo_limit != parser.get_default("demo_limit")
    out = args.out or (SMOKE_OUT if smoke else FULL_OUT)
    try:
        result = run(args, out)
    except FairError as e:
        print(f"bench-dtype: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(markdown(result, out)))
    if out == FULL_OUT:
        PAGE.write_text("\n".join(markdown(result, out)))
    print(f"-> {out}" + (f", {PAGE}" if out == FULL_OUT else ""))
    return 0


if __name__ == "__main__":  # vLLM, if an engine ever starts it, spawns processes
    sys.exit(main())
