"""The generation engine protocol and the pieces every engine shares.

An engine turns user prompts into completions: `engine.generate(prompts, sampling) -> list[Generation]`, in
prompt order. `HFEngine` (fair/engines/hf.py) batches with transformers and serves CPUs and tests; `VLLMEngine`
(fair/engines/vllm.py) is the engine for GPUs; `DataParallelEngine` runs copies of either in worker processes.
All of them encode prompts with `encode_prompt`, so they see exactly the same token ids. `make_engine`
(fair/engines/factory.py) builds one by name: the engines import this module, the factory imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

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
