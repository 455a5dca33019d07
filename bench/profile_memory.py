"""Where an evaluation's memory goes: the continuous engine's RSS, step by step, on SVAMP test questions.

    OMP_NUM_THREADS=1 python -m bench.profile_memory [--questions 64] [--new-tokens 64] [--slots 64] [--dtype auto]
                                               [--model smollm2-135m]

Prints the process's resident memory (VmRSS, split into anonymous memory and mapped files) and its peak (VmHWM,
reset before each step through fair/rss.py) after the imports, the engine's load, the answers and the engine's
release; beside them the slot cache's size as computed from the model's shape (slots x (longest prompt + new
tokens) positions) and the peak of Python's own objects (tracemalloc), so that what is left is torch's buffers
and the allocator's. docs/benchmarks.md (the evaluation's memory) has a run of it.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from pathlib import Path

from fair.rss import reset_peak

MB = 2**20


def status() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def show(step: str) -> None:
    s = status()
    print(f"| {step} | {s['VmRSS']:,.0f} | {s['RssAnon']:,.0f} | {s['RssFile']:,.0f} | {s['VmHWM']:,.0f} |", flush=True)
    reset_peak()


def cache_mb(model, slots: int, positions: int) -> float:
    """The slot cache (fair/engines/continuous.py): keys and values per layer, slots x positions each."""
    c = model.config
    dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_position = c.num_hidden_layers * 2 * c.num_key_value_heads * dim * model.dtype.itemsize
    return slots * positions * per_position / MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--model", default="smollm2-135m", help="a model name or folder (a trained final/)")
    args = parser.parse_args()
    print("| step | RSS MB | anonymous | files | peak in the step |\n| --- | ---: | ---: | ---: | ---: |")
    show("interpreter and fair/rss.py")
    from fair.engines.base import Sampling, encode_prompt
    from fair.engines.hf import HFEngine
    from fair.tasks import get_task

    task = get_task("svamp")
    prompts = [task.prompt(e) for e in task.load("test", None, args.questions)]
    show("imports (torch, transformers), the questions")
    engine = HFEngine(args.model, batch_size=args.slots, dtype=args.dtype)
    weights = sum(p.numel() * p.element_size() for p in engine.model.parameters()) / MB
    show(f"engine loaded ({engine.precision.dtype}, weights {weights:,.0f} MB)")
    longest = max(len(encode_prompt(engine.tokenizer, p, engine.chat)) for p in prompts)
    cache = cache_mb(engine.model, min(args.slots, len(prompts)), longest + args.new_tokens)
    tracemalloc.start()
    began = time.perf_counter()
    generations = engine.generate(prompts, Sampling(args.new_tokens))
    seconds = time.perf_counter() - began
    python_peak = tracemalloc.get_traced_memory()[1] / MB
    tracemalloc.stop()
    tokens = sum(g.generated_tokens for g in generations)
    show(f"answers ({tokens:,} tokens in {seconds:.0f} s; slot cache {cache:,.0f} MB, Python objects' peak "
         f"{python_peak:,.1f} MB)")
    from fair.rss import release_freed

    del engine, generations
    gc.collect()
    release_freed()
    show("engine released (gc, malloc_trim)")


if __name__ == "__main__":
    main()
