"""Training data: the paper's SVAMP committee files -> examples -> tokens -> (packed) batches."""

from __future__ import annotations

import json
import random

import pytest
import torch

from fair.engines.base import encode_prompt
from fair.errors import FairError
from fair.examples import TrainExample, chat_feedback_prompt
from fair.records import StudentAnswer
from fair.tasks import get_task
from train.data import (
    FEEDBACK,
    RATIONALE,
    Tokenized,
    attention_mask_4d,
    build_examples,
    collate,
    load_records,
    single_row,
    tokenize_examples,
)

SVAMP = get_task("svamp")


@pytest.fixture(scope="module")
def seed_files(paper_seed_files):
    return paper_seed_files


@pytest.fixture(scope="module")
def records(paper_records):
    return paper_records


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def kinds_of(examples, kind):
    return [e for e in examples if e.kind == kind]


# ----------------------------------------------------------------------------------------------------------
# Examples from the paper's files


def test_paper_prompts_are_the_papers_text(records, seed_files):
    row = json.loads(seed_files[0].read_text())[0]
    examples, _ = build_examples(records[:1], SVAMP, "mixed", seed=731, prompt_format="paper")
    feedback, rationale = examples
    assert feedback.prompt == (
        "### Instruction:\nImagine you are a teacher, I will give you one student's incorrect answer to a question. "
        "You should point out the mistakes in the student's answer.\n### Input:\n"
        f"Question: {row['question']}\nStudent's Answer: {row['student_wrong_pred']}\n"
        f"Hint: The correct answer should be {row['gold_answer']}.\n\n### Response:"
    )
    assert rationale.prompt == (
        "### Instruction:\nAnswer the following question. Let's think step by step.\n### Input:\n"
        f"{row['question']}\n### Response:"
    )


def answer(task, **fields):
    base = dict(id="x", index=0, task=task, split="train", question="Q?", gold="yes", prediction=" wrong ",
                extracted=None, correct=None, prompt_tokens=0, generated_tokens=0, finish_reason="stop")
    return {"id": "x", "mistake": base | fields, "feedback": {"gpt": {"text": "F"}},
            "rationales": {"gpt": {"text": "R", "accepted": True}}}


def test_paper_prompts_for_strategyqa_and_logiqa_keep_the_papers_gold():
    """StrategyQA's hint is its gold field up to the TAB ('true.', so 'true..'); LogiQA's is the option index."""
    strategyqa = get_task("strategyqa")
    (feedback, rationale), _ = build_examples([answer("strategyqa", solution="Facts.")], strategyqa, "gpt", 0, "paper")
    assert feedback.prompt.endswith("Question: Q?\nStudent's Answer:  wrong \nHint: The correct answer should be "
                                    "true..\n\n### Response:")
    assert rationale.prompt == ('### Instruction:\nAnswer the following question. Let\'s think step by step. First, '
                                'you should answer "true" or "false". Then, you should explain how you drew this '
                                'conclusion.\n### Input:\nQ?\n### Response:')
    logiqa = get_task("logiqa")
    record = answer("logiqa", gold="C", context="Ctx.", options=["a", "b", "c", "d"])
    (feedback, rationale), _ = build_examples([record], logiqa, "gpt", 0, "paper")
    question = logiqa.paper_prompt(StudentAnswer.from_json(record["mistake"], "t").example())
    assert f"Question: {question}\nStudent's Answer:  wrong \nHint: The correct answer should be 2.\n" in feedback.prompt
    assert rationale.prompt == ("### Instruction:\nAnswer the following question based on the given context, query "
                                f"and options.\n### Input:\n{question}\n### Response:")


def test_chat_rationale_prompt_is_the_eval_prompt(records):
    examples, _ = build_examples(records[:5], SVAMP, "mixed", seed=0, prompt_format="chat")
    for e in examples:
        mistake = StudentAnswer.from_json(next(r for r in records if r["id"] == e.mistake_id)["mistake"], "t")
        if e.kind == "rationale":
            assert e.prompt == SVAMP.prompt(mistake.example())
        else:
            assert mistake.question in e.prompt and mistake.prediction.strip() in e.prompt
            assert f"correct final answer is {mistake.gold}." in e.prompt


# ----------------------------------------------------------------------------------------------------------
# load_records


def test_committee_file_order_does_not_change_the_draw(tmp_path, records):
    # committee.jsonl is written as replies finish: two runs write the same records in different orders
    shuffled = records[:40]
    random.Random(3).shuffle(shuffled)
    drawn = []
    for i, order in enumerate((records[:40], shuffled)):
        path = tmp_path / f"committee-{i}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in order))
        drawn.append(build_examples(load_records(path, SVAMP), SVAMP, "mixed", seed=0)[0])
    assert drawn[0] == drawn[1]


def test_load_records_errors(tmp_path, records):
    path = tmp_path / "committee.jsonl"
    with pytest.raises(FairError, match="missing file"):
        load_records(path, SVAMP)
    path.write_text("")
    with pytest.raises(FairError, match=f"{path}: no records"):
        load_records(path, SVAMP)
    good = json.dumps(records[0])
    path.write_text(f"{good}\n{{not json\n")
    with pytest.raises(FairError, match=f"{path}:2: not valid JSON"):
        load_records(path, SVAMP)
    bad = {k: v for k, v in records[1].items() if k != "rationales"}
    path.write_text(f"{good}\n{json.dumps(bad)}\n")
    with pytest.raises(FairError, match=rf"record 1 \(id '{bad['id']}'\): missing or malformed field 'rationales'"):
        load_records(path, SVAMP)
    path.write_text(f"{good}\n{good}\n")
    with pytest.raises(FairError, match="duplicate id"):
        load_records(path, SVAMP)
    path.write_text(f"{good}\n")
    with pytest.raises(FairError, match="'svamp' mistake, but task 'gsm8k'"):
        load_records(path, get_task("gsm8k"))
    assert [r["id"] for r in load_records(path, SVAMP)] == [records[0]["id"]]


# ----------------------------------------------------------------------------------------------------------
# Tokens


def example(kind, prompt, completion):
    return TrainExample(kind, "x", "gpt", prompt, completion)


def test_chat_tokens_mask_exactly_the_prompt_and_end_with_im_end(tokenizer):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end == tokenizer.eos_token_id
    examples = [example("feedback", "What is 2+2?", "You added wrong."), example("rationale", "Q", "2+2=4")]
    items, report = tokenize_examples(examples, tokenizer, max_length=512, prompt_format="chat")
    for item, e, code in zip(items, examples, [FEEDBACK, RATIONALE], strict=True):
        prompt = encode_prompt(tokenizer, e.prompt, chat=True)
        n = len(prompt)
        assert item.kind == code and item.input_ids[:n] == prompt
        assert item.labels[:n] == [-100] * n and -100 not in item.labels[n:]
        assert item.labels[n:] == item.input_ids[n:] and item.input_ids[-1] == im_end
        assert tokenizer.decode(item.input_ids[n:-1]) == e.completion
    assert report.examples == 2 and report.skipped_too_long == 0
    assert report.target_tokens == {k: sum(x != -100 for x in i.labels) for k, i in zip(["feedback", "rationale"], items, strict=True)}


def test_paper_tokens_have_no_chat_template(tokenizer):
    (item,), _ = tokenize_examples([example("rationale", "### Response:", "4")], tokenizer, 64, "paper")
    prompt = tokenizer("### Response:")["input_ids"]
    assert item.input_ids == prompt + tokenizer("4", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_examples_that_do_not_fit_are_left_out_never_cut(tokenizer):
    """A completion cut at max_length would be trained without its end token (the paper cut them): left out."""
    prompt_len = len(encode_prompt(tokenizer, "Q", chat=True))
    fits = example("feedback", "Q", "ok")
    items, report = tokenize_examples(
        [example("rationale", "Q", "word " * 50), example("rationale", "Q " * 200, "short"), fits],
        tokenizer, max_length=prompt_len + 10, prompt_format="chat")
    assert report.examples == 1 and report.skipped_too_long == 2
    assert all(item.input_ids[-1] == tokenizer.eos_token_id for item in items)  # every kept example ends
    assert report.target_tokens == {"rationale": 0, "feedback": 2}


# ----------------------------------------------------------------------------------------------------------
# Batches


def toy(n_prompt, n_completion, kind=RATIONALE, start=10):
    ids = list(range(start, start + n_prompt + n_completion))
    return Tokenized(ids, [-100] * n_prompt + ids[n_prompt:], kind)


def test_collate_pads_without_training_on_padding():
    items = [toy(3, 2, FEEDBACK), toy(2, 5)]
    batch = collate(items, pad_id=0, pack=False, max_length=16)
    assert batch["input_ids"].shape == (2, 7) and int(batch["num_rows"]) == 2
    assert batch["labels"][0, 5:].tolist() == [-100, -100] and batch["input_ids"][0, 5:].tolist() == [0, 0]
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 2, [1] * 7]
    assert batch["kinds"].tolist() == [[-1, -1, -1, 0, 0, -1, -1], [-1, -1, 1, 1, 1, 1, 1]]
    assert ((batch["kinds"] == -1) == (batch["labels"] == -100)).all()


def test_packing_first_fit():
    items = [toy(3, 3), toy(2, 4, FEEDBACK), toy(4, 4), toy(1, 2, FEEDBACK)]  # lengths 6, 6, 8, 3
    batch = collate(items, pad_id=0, pack=True, max_length=12)
    assert int(batch["num_rows"]) == 2 and batch["input_ids"].shape == (2, 12)
    assert batch["seq_ids"].tolist() == [[0] * 6 + [1] * 6, [0] * 8 + [1] * 3 + [-1]]
    assert batch["position_ids"].tolist() == [[*range(6), *range(6)], [*range(8), *range(3), 0]]
    assert batch["labels"][1, -1] == -100 and batch["kinds"][1, -1] == -1
    unpacked = collate(items, pad_id=0, pack=False, max_length=12)
    for key in ("labels", "kinds"):
        assert sorted(batch[key][batch[key] != -100 if key == "labels" else batch[key] >= 0].tolist()) == sorted(
            unpacked[key][unpacked[key] != -100 if key == "labels" else unpacked[key] >= 0].tolist())
    assert ((batch["kinds"] == -1) == (batch["labels"] == -100)).all()


def test_attention_mask_4d():
    mask = attention_mask_4d(torch.tensor([[0, 0, 1, 1, -1]]))
    assert mask.shape == (1, 1, 5, 5) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    additive = attention_mask_4d(torch.tensor([[0, 1]]), dtype=torch.float32)
    assert additive[0, 0].tolist() == [[0.0, torch.finfo(torch.float32).min], [torch.finfo(torch.float32).min, 0.0]]


def target_loss_sum(model, batch, **inputs):
    """Sum of per-token cross-entropy over the target tokens; the LM head runs only where there is a target."""
    hidden = model.model(input_ids=batch["input_ids"], **inputs).last_hidden_state[:, :-1]
    labels = batch["labels"][:, 1:]
    logits = model.lm_head(hidden[labels != -100])
    return torch.nn.functional.cross_entropy(logits.double(), labels[labels != -100], reduction="sum")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(attn, records, tokenizer, tiny_model_dir):
    """No attention across packed examples: the packed batch gives the same per-token losses as a padded one."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn).eval()
    examples, _ = build_examples(records[:8], SVAMP, "mixed", seed=0, prompt_format="chat")
    items, _ = tokenize_examples(examples, tokenizer, max_length=256, prompt_format="chat")
    unpacked, packed = collate(items, tokenizer.pad_token_id, False, 512), collate(items, tokenizer.pad_token_id, True, 512)
    assert int(packed["num_rows"]) < len(items)
    dtype = None if attn == "sdpa" else torch.float32
    with torch.no_grad():
        reference = target_loss_sum(model, unpacked, attention_mask=unpacked["attention_mask"])
        mask = attention_mask_4d(packed["seq_ids"], dtype=dtype)
        loss = target_loss_sum(model, packed, attention_mask=mask, position_ids=packed["position_ids"])
        causal_only = attention_mask_4d(torch.where(packed["seq_ids"] >= 0, 0, -1), dtype)  # one sequence per row
        leaky = target_loss_sum(model, packed, attention_mask=causal_only, position_ids=packed["position_ids"])
    assert loss == pytest.approx(reference.item(), rel=1e-4)
    assert leaky != pytest.approx(reference.item(), rel=1e-4)  # the comparison can see cross-example attention
    flat = single_row(packed)  # the layout flash attention needs; the 4D mask works on it too
    with torch.no_grad():
        mask = attention_mask_4d(flat["seq_ids"], dtype=dtype)
        flat_loss = target_loss_sum(model, flat, attention_mask=mask, position_ids=flat["position_ids"])
        # Transformers also finds packed examples from position_ids alone, but only without a KV cache: with the
        # default use_cache=True (even in train mode) it builds a cache and skips that check, attending across.
        by_positions = target_loss_sum(model, packed, position_ids=packed["position_ids"], use_cache=False)
    assert flat_loss == pytest.approx(reference.item(), rel=1e-4)
    assert by_positions == pytest.approx(reference.item(), rel=1e-4)


def test_example_bounds_split_a_row_at_every_example_and_padding_run():
    from train.varlen import example_bounds

    packed = collate([Tokenized([1, 2, 3], [-100, 2, 3], 0), Tokenized([4, 5], [-100, 5], 1),
                      Tokenized([6, 7, 8, 9], [-100, -100, 8, 9], 0)], pad_id=0, pack=True, max_length=5)
    flat = single_row(packed)  # rows [1 2 3 4 5] and [6 7 8 9 pad]
    assert example_bounds(flat["seq_ids"]) == (0, 3, 5, 9, 10)


def test_varlen_attention_gives_the_padded_batch_its_loss_and_gradients(records, tokenizer, tiny_model_dir):
    """The micro-batch end to end in one row, each example attending to itself alone (train/varlen.py)."""
    from transformers import LlamaForCausalLM

    from train.varlen import VARLEN, example_bounds

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    examples, _ = build_examples(records[:8], SVAMP, "mixed", seed=0, prompt_format="chat")
    items, _ = tokenize_examples(examples, tokenizer, max_length=256, prompt_format="chat")
    padded = collate(items, tokenizer.pad_token_id, False, 512)
    row = collate(items, tokenizer.pad_token_id, True, sum(len(i.input_ids) for i in items))
    assert row["input_ids"].shape == (1, sum(len(i.input_ids) for i in items))  # no padding at all
    results = []
    for attn, batch, inputs in (("sdpa", padded, {"attention_mask": padded["attention_mask"]}),
                                (VARLEN, row, {"position_ids": row["position_ids"],
                                               "example_bounds": example_bounds(row["seq_ids"])})):
        model.set_attn_implementation(attn)
        model.zero_grad()
        loss = target_loss_sum(model, batch, use_cache=False, **inputs)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (reference, reference_grads), (loss, grads) = results
    assert loss == pytest.approx(reference, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(reference_grads, grads, strict=True))


def test_the_training_prompt_fences_the_answer_as_the_committee_does():
    """A student's answer that holds '>>>' (a Python session) cannot close the fence early in either prompt."""
    from gen.committee.prompts import fair_feedback

    task = get_task("svamp")
    [example] = task.load("train")[:1]
    mistake = StudentAnswer.graded(task, example, ">>> 2 + 2\n4\n>>>> The answer is 5.", finish_reason="stop")
    fenced = "<<<<<\n>>> 2 + 2\n4\n>>>> The answer is 5.\n>>>>>"
    assert fenced in chat_feedback_prompt(task, mistake)
    assert fenced in fair_feedback(task, mistake)[-1][1]
