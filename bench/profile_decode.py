"""Where a decode step of the continuous engine goes: torch.profiler over a short run, operators by self time.

    python bench/profile_decode.py [--dtype auto] [--slots 64] [--steps 32] [--eager]

Runs `slots` SVAMP prompts through fair/engines/continuous.py for `steps` new tokens (one prefill, then decode
steps), under torch.profiler, and prints the operators that took the most CPU time with the wall time per step,
so that what is not matmul (aten::mm / aten::addmm / aten::bmm; mkldnn::_linear_pointwise where the bf16 weights
are packed) is seen at a glance. `--eager` profiles the engine's eager step (weights as loaded), the baseline.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fair.dtype import DTYPES
from fair.engines.base import Sampling, encode_prompt
from fair.engines.hf import HFEngine
from fair.tasks import get_task


def timed(method, seconds: list[float], prof):
    """`method`, appending each call's wall time to `seconds`; the profiler starts at its first call."""
    def wrapper(*args):
        if prof is not None and not seconds:
            prof.start()
        began = time.perf_counter()
        method(*args)
        seconds.append(time.perf_counter() - began)
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rows", type=int, default=25, help="operators to print")
    parser.add_argument("--eager", action="store_true", help="the eager step (weights as loaded)")
    args = parser.parse_args()
    task = get_task("svamp")
    engine = HFEngine("smollm2-135m", batch_size=args.slots, dtype=args.dtype)
    prompts = [task.prompt(e) for e in task.load("train")[: args.slots]]
    encoded = [encode_prompt(engine.tokenizer, p, True) for p in prompts]
    sampling = Sampling(max_new_tokens=args.steps)
    engine.continuous.eager = args.eager
    engine.continuous.generate(encoded[:4], Sampling(max_new_tokens=4))  # warm-up (and compilation, if any)
    prof, times = profile(activities=[ProfilerActivity.CPU]), {"prefill": [], "decode": []}
    batcher = engine.continuous
    for phase in times:  # time each phase's calls; the profiler sees the decode steps only
        setattr(batcher, f"_{phase}", timed(getattr(batcher, f"_{phase}"), times[phase],
                                            prof if phase == "decode" else None))
    batcher.generate(encoded, sampling)
    prof.stop()
    steps = times["decode"]
    print(f"{engine.precision.dtype}{', eager' if args.eager else ''}, {args.slots} slots, {torch.get_num_threads()} threads: prefill "
          f"{sum(times['prefill']):.2f} s over {len(times['prefill'])} call(s); {len(steps)} decode steps, "
          f"median {sorted(steps)[len(steps) // 2] * 1000:.0f} ms, min {min(steps) * 1000:.0f} ms")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
