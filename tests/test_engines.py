"""Engines: the transformers engine against per-prompt generation, order, stop strings, seeds; vLLM for real."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch

from fair.engines.base import Sampling, cut_at_stop, encode_prompt
from fair.engines.factory import make_engine
from fair.engines.hf import HFEngine

PROMPTS = ["What is 2 + 2?", "Name a colour.", "A much longer prompt: " + "count the apples and pears " * 6, "Hi"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> HFEngine:
    return HFEngine(str(tiny_model_dir), batch_size=3, dtype="float32")  # exact comparisons: not bf16 on any CPU


def one_at_a_time(engine: HFEngine, prompt: str, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([encode_prompt(engine.tokenizer, prompt, chat=True)])
    out = engine.model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                                temperature=None, top_p=None, top_k=None, pad_token_id=engine.tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_batched_greedy_matches_unbatched_and_keeps_order(engine):
    sampling = Sampling(max_new_tokens=12)
    batched = engine.generate(PROMPTS, sampling)
    for prompt, generation in zip(PROMPTS, batched, strict=True):
        alone = one_at_a_time(engine, prompt, 12)
        assert generation.text == engine.tokenizer.decode(alone, skip_special_tokens=True)
        assert generation.prompt_tokens == len(encode_prompt(engine.tokenizer, prompt, chat=True))
        assert generation.generated_tokens == 12 and generation.finish_reason == "length"


def test_seeded_sampling_repeats_and_differs_by_seed(engine):
    first = engine.generate(PROMPTS, Sampling(max_new_tokens=10, temperature=1.0, seed=1))
    again = engine.generate(PROMPTS, Sampling(max_new_tokens=10, temperature=1.0, seed=1))
    other = engine.generate(PROMPTS, Sampling(max_new_tokens=10, temperature=1.0, seed=2))
    assert [g.text for g in first] == [g.text for g in again]
    assert [g.text for g in first] != [g.text for g in other]


def test_stop_strings_cut_the_completion(engine):
    free = engine.generate(PROMPTS[:1], Sampling(max_new_tokens=16))[0].text
    stop = free[3:6]
    assert stop
    stopped = engine.generate(PROMPTS[:1], Sampling(max_new_tokens=16, stop=(stop,)))[0]
    assert stopped.text == free[: free.index(stop)] and stopped.finish_reason == "stop"


def test_cut_at_stop_picks_the_earliest():
    assert cut_at_stop("a1b2c", ("2", "1")) == ("a", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False)


def test_chat_template_wraps_the_prompt(engine):
    ids = encode_prompt(engine.tokenizer, "hello", chat=True)
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n") and "hello" in text
    assert engine.tokenizer.decode(encode_prompt(engine.tokenizer, "hello", chat=False)) == "hello"


def test_data_parallel_engine_matches_a_single_engine(engine, tiny_model_dir):
    dp = make_engine("hf", str(tiny_model_dir), batch_size=2, data_parallel_size=2, dtype="float32")
    try:
        sampling = Sampling(max_new_tokens=8)
        assert [g.text for g in dp.generate(PROMPTS, sampling)] == [g.text for g in engine.generate(PROMPTS, sampling)]
    finally:
        dp.close()


def test_vllm_on_a_cpu_runs_in_process_with_an_explicit_kv_cache(monkeypatch):
    """The setting make bench-mine --vllm-variants measured fastest on CPUs, read by vLLM when the engine starts."""
    from fair.engines.vllm import VLLMEngine

    seen = []

    class FakeLLM:
        def __init__(self, **kwargs):
            seen.append((os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING"), kwargs.get("kv_cache_memory_bytes")))

        def get_tokenizer(self):
            return None

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    monkeypatch.setattr("fair.engines.vllm.resolve_model", lambda model: model)
    for cuda, told in ((False, None), (False, "1"), (True, None)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", told or "unset")  # undone after the test
        if told is None:
            monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
        VLLMEngine("student")
    # in-process on a CPU; an explicit setting wins; GPUs keep vLLM's default
    assert [in_process for in_process, _ in seen] == ["0", "1", None]
    # a CPU's KV cache is sized explicitly (vLLM's fraction less this process's size went negative in-process)
    cpu_kv, _, gpu_kv = (size for _, size in seen)
    assert cpu_kv >= 1 << 30 and gpu_kv is None


@pytest.mark.slow
def test_vllm_engine_agrees_with_transformers_on_smollm2(data_dir):
    """The real thing: vllm(-cpu) and transformers on SmolLM2-135M, same token ids, greedy, float32."""
    pytest.importorskip("vllm")
    from fair.tasks import get_task

    task = get_task("svamp")
    examples = task.load("train")[:6]
    prompts = [task.prompt(e) for e in examples]
    sampling = Sampling(max_new_tokens=48)
    from fair.engines.vllm import VLLMEngine

    # 1 GiB of KV cache (23k tokens) is plenty for six answers, and keeps the test within the suite's memory guard.
    vllm = VLLMEngine("smollm2-135m", dtype="float32", kv_cache_bytes=1 << 30)
    vllm_out = vllm.generate(prompts, sampling)
    hf_out = make_engine("hf", "smollm2-135m", dtype="float32").generate(prompts, sampling)
    assert all(g.generated_tokens > 0 and g.text.strip() for g in vllm_out)
    assert [g.prompt_tokens for g in vllm_out] == [g.prompt_tokens for g in hf_out]
    same_start = sum(v.text[:40] == h.text[:40] for v, h in zip(vllm_out, hf_out, strict=True))
    assert same_start >= 5, [(v.text[:60], h.text[:60]) for v, h in zip(vllm_out, hf_out, strict=True)]
    stopped = vllm.generate(prompts[:1], Sampling(max_new_tokens=48, stop=("\n",)))[0]
    assert "\n" not in stopped.text and stopped.finish_reason == "stop"
