"""Continuous batching: refilled slots give exactly what `model.generate` gives one prompt at a time."""

from __future__ import annotations

import pytest
import torch

from fair.engines.base import Sampling, encode_prompt
from fair.engines.continuous import ContinuousBatcher
from fair.engines.hf import HFEngine
from fair.engines.packed import packed_linears, packing_available

PROMPTS = ["What is 2 + 2?", "Name a colour.", "A much longer prompt: " + "count the apples and pears " * 6, "Hi",
           "Seven", "How many legs has a spider? Think step by step.", "x " * 30]


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> HFEngine:
    return HFEngine(str(tiny_model_dir), batch_size=2, dtype="float32")  # exact comparisons: not bf16 on any CPU


def alone(engine: HFEngine, prompt: str, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([encode_prompt(engine.tokenizer, prompt, chat=True)])
    out = engine.model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                                temperature=None, top_p=None, top_k=None, pad_token_id=engine.tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_slots_refilled_as_answers_end_match_one_at_a_time(engine):
    """Some tokens of the random model's answers play EOS, so answers end at different steps and two slots serve
    seven prompts; each answer must equal the unbatched one cut after the same token (greedy decoding: ending
    an answer early does not change its earlier tokens)."""
    free = [alone(engine, prompt, 24) for prompt in PROMPTS]
    eos = {tokens[3 * i % 20 + 1] for i, tokens in enumerate(free)}  # answer i ends by token 3i % 20 + 1
    batcher = ContinuousBatcher(engine.model, engine.tokenizer, eos, slots=2)
    encoded = [encode_prompt(engine.tokenizer, p, chat=True) for p in PROMPTS]
    results = batcher.generate(encoded, Sampling(max_new_tokens=24))
    lengths = set()
    for tokens, generation in zip(free, results, strict=True):
        end = next((k + 1 for k, t in enumerate(tokens) if t in eos), len(tokens))
        assert generation.generated_tokens == end
        assert generation.text == engine.tokenizer.decode(tokens[:end], skip_special_tokens=True)
        assert generation.finish_reason == ("stop" if tokens[end - 1] in eos else "length")
        lengths.add(end)
    assert len(lengths) > 2, "answers must end at different steps for this test to mean anything"


def test_continuous_and_generate_paths_agree(engine):
    sampling = Sampling(max_new_tokens=10)
    continuous = engine.generate(PROMPTS, sampling)
    batcher, engine.continuous = engine.continuous, None
    try:
        plain = engine.generate(PROMPTS, sampling)
    finally:
        engine.continuous = batcher
    assert [g.text for g in continuous] == [g.text for g in plain]
    assert engine.model.config._attn_implementation != "fair_slots"  # the model is left as it was


def test_sampling_is_seeded_and_top_p_narrows(engine):
    wide = engine.generate(PROMPTS, Sampling(max_new_tokens=8, temperature=1.0, seed=3))
    assert [g.text for g in wide] == [g.text for g in engine.generate(PROMPTS, Sampling(8, 1.0, seed=3))]
    greedy = engine.generate(PROMPTS, Sampling(max_new_tokens=8))
    narrow = engine.generate(PROMPTS, Sampling(max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=3))
    assert [g.text for g in narrow] == [g.text for g in greedy]  # top_p near 0 keeps only the likeliest token


def test_bf16_continuous_matches_generate_one_at_a_time(tiny_model_dir):
    """In bfloat16 too (the engine's choice on CPUs with AMX or AVX512-BF16): the slot cache, the fused attention
    and the argmax keep the run's dtype and give what `generate` gives each prompt alone in that dtype."""
    engine = HFEngine(str(tiny_model_dir), batch_size=3, dtype="bfloat16")
    assert engine.model.dtype == torch.bfloat16
    results = engine.generate(PROMPTS, Sampling(max_new_tokens=12))
    for prompt, generation in zip(PROMPTS, results, strict=True):
        tokens = alone(engine, prompt, 12)
        end = next((k + 1 for k, t in enumerate(tokens) if t in engine._eos_ids()), len(tokens))
        assert generation.text == engine.tokenizer.decode(tokens[:end], skip_special_tokens=True)


def test_packed_weights_give_the_same_bits_and_are_let_go(tiny_model_dir):
    """bf16 linear layers through oneDNN's packed weights: the same logits bit for bit at the row counts of a
    decode step (slots, and fewer after a shrink) and of a prefill (rows x prompt width), and the modules
    answer with their own forward afterwards."""
    model = HFEngine(str(tiny_model_dir), batch_size=4, dtype="bfloat16").model
    if not packing_available(model):
        pytest.skip("this torch has no oneDNN bf16 support on this CPU")
    linear = model.get_output_embeddings()
    torch.manual_seed(0)
    with torch.inference_mode():
        inputs = [torch.randint(0, 1000, shape) for shape in [(1, 1), (3, 1), (64, 1), (5, 37)]]
        plain = [model(input_ids=ids).logits for ids in inputs]
        with packed_linears(model, rows=64):
            assert "forward" in vars(linear)
            packed = [model(input_ids=ids).logits for ids in inputs]
        assert "forward" not in vars(linear)
    for a, b in zip(plain, packed, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(KeyboardInterrupt), packed_linears(model, rows=4):
        raise KeyboardInterrupt  # a run stopped mid-generation leaves the model as it was
    assert not any("forward" in vars(m) for m in model.modules())


def test_eager_step_gives_the_same_completions(tiny_model_dir):
    """The bench's baseline (weights as loaded) and the packed step decode the same tokens."""
    engine = HFEngine(str(tiny_model_dir), batch_size=3, dtype="bfloat16")
    fast = engine.generate(PROMPTS, Sampling(max_new_tokens=12))
    engine.continuous.eager = True
    assert [g.text for g in engine.generate(PROMPTS, Sampling(max_new_tokens=12))] == [g.text for g in fast]


def test_float32_weights_are_not_packed(engine):
    """MKL's packed fp32 path measured no faster: an fp32 model runs as loaded."""
    assert not packing_available(engine.model)
    with packed_linears(engine.model, rows=2):
        assert not any("forward" in vars(m) for m in engine.model.modules())
