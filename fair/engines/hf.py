"""Batched generation with transformers: the engine for CPUs, tests and any model vLLM cannot load.

Decoder models with plain causal attention (Llama, Qwen2/3, Mistral without a sliding window) are served by
continuous batching (fair/engines/continuous.py): `batch_size` rows decode together and a finished row takes the next
prompt at once. Other models go through `model.generate` in batches of prompts of similar length, padded on
the left so that every row's next token sits in the last column. Results come back in the caller's order.
"""

from __future__ import annotations

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from fair.dtype import resolve_dtype
from fair.engines.base import Generation, Sampling, cut_at_stop, encode_prompt
from fair.engines.continuous import ContinuousBatcher, supports
from fair.models import load_causal_lm, resolve_model


class HFEngine:
    def __init__(self, model: str, *, chat: bool = True, batch_size: int = 32, dtype: str = "auto"):
        path = resolve_model(model)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.precision = resolve_dtype(dtype)  # bf16 where the hardware has fast kernels for it (fair/dtype.py)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = load_causal_lm(path, self.precision.torch_dtype).to(self.device).eval()  # one copy (fair/models.py)
        self.chat = chat
        self.batch_size = batch_size
        self.continuous = ContinuousBatcher(self.model, self.tokenizer, self._eos_ids(), batch_size) \
            if supports(self.model) else None

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        encoded = [encode_prompt(self.tokenizer, p, self.chat) for p in prompts]
        if self.continuous is not None:
            # disable None: a terminal only; in a log the stage's own lines say it (fair/progress.py)
            with tqdm(total=len(prompts), desc="answers", unit="answer", leave=False,
                      disable=len(prompts) < 2 * self.batch_size or None) as progress:
                return self.continuous.generate(encoded, sampling, progress)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
        results: list[Generation | None] = [None] * len(prompts)
        if not sampling.greedy:
            torch.manual_seed(sampling.seed)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc="batches", unit="batch", leave=False, disable=len(starts) < 2 or None):
            batch = order[start : start + self.batch_size]
            for i, generation in zip(batch, self._generate_batch([encoded[i] for i in batch], sampling), strict=True):
                results[i] = generation
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(self, batch: list[list[int]], sampling: Sampling) -> list[Generation]:
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device)
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=pad, do_sample=not sampling.greedy)
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        else:  # models ship generation configs with sampling defaults; greedy must not warn about or use them
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        eos_ids = self._eos_ids()
        generations = []
        for ids, row in zip(batch, output[:, width:].tolist(), strict=True):
            ended_at = next((k for k, token in enumerate(row) if token in eos_ids), None)
            new_tokens = row if ended_at is None else row[: ended_at + 1]
            text, stopped = cut_at_stop(self.tokenizer.decode(new_tokens, skip_special_tokens=True), sampling.stop)
            finished = ended_at is not None or stopped
            generations.append(Generation(text, len(ids), len(new_tokens), "stop" if finished else "length"))
        return generations

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        return {e for e in eos if e is not None} | {self.tokenizer.eos_token_id}
