"""Stage 3 data: committee records -> (prompt, completion) examples -> token ids -> batches.

Which teachers' texts each mistake is trained on, and the prompts, are fair/examples.py's (`fair export` writes
the same examples as chat rows); here they are tokenized as the engines encode prompts at evaluation.

Unlike the paper, padding is never trained on (its labels padded with EOS ids), and batches can be packed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fair import paper
from fair.engines.base import encode_prompt
from fair.errors import FairError
from fair.examples import BuildReport, ExampleBuilder, PromptFormat, TrainExample
from fair.jsonl import read_jsonl
from fair.recipes import PAPER_FILTER, Filter
from fair.records import check_committee_record, teacher_of
from fair.tasks import Task

FEEDBACK, RATIONALE = 0, 1  # integer codes used in tensors
KIND_CODES = {"feedback": FEEDBACK, "rationale": RATIONALE}


# ----------------------------------------------------------------------------------------------------------
# Records


def load_records(source: str | Path, task: Task, *, rationale_path: str | Path | None = None,
                 data_dir: str | Path | None = None) -> list[dict]:
    """Our committee.jsonl, or the paper's feedback file when `rationale_path` names its rationale file."""
    source = Path(source)
    if not source.exists():
        raise FairError(f"missing file {source}")
    if rationale_path is not None:
        records = paper.import_committee(task, source, rationale_path, task.load("train", data_dir))
    else:
        records = list(read_jsonl(source))  # a malformed line is a FairError naming file:line
    if not records:
        raise FairError(f"{source}: no records")
    seen: set[str] = set()
    for i, record in enumerate(records):
        where = f"{source} record {i} (id {record.get('id')!r})"
        check_committee_record(record, where, task)
        if record["id"] in seen:
            raise FairError(f"{where}: duplicate id")
        seen.add(record["id"])
    if rationale_path is None:
        # committee.jsonl is written as replies finish, an order that varies from run to run; the split's order
        # makes a seed draw the same examples every time (the paper's files are already in their own order).
        records.sort(key=lambda record: record["mistake"]["index"])
    return records


def teachers_of(records: list[dict]) -> list[str]:
    """Every teacher named in the records, in first-seen (committee) order; a rationale sample is its teacher's."""
    return list(dict.fromkeys(teacher_of(n) for r in records for n in (*r["feedback"], *r["rationales"])))


# ----------------------------------------------------------------------------------------------------------
# Examples


def build_examples(records: list[dict], task: Task, mode: str, seed: int, prompt_format: PromptFormat = "chat",
                   filter: Filter = PAPER_FILTER) -> tuple[list[TrainExample], BuildReport]:
    """Every record's examples (fair/examples.py's ExampleBuilder: the modes, the filters, the draws, the prompts)."""
    builder = ExampleBuilder(task, mode, seed, prompt_format, teachers_of(records), filter)
    examples = [example for record in records for example in builder.add(record)]
    return examples, builder.report


# ----------------------------------------------------------------------------------------------------------
# Tokens


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens (and nowhere else)
    kind: int  # FEEDBACK or RATIONALE


@dataclass
class TokenizeReport:
    examples: int  # kept
    skipped_too_long: int  # prompt + completion + end token over max_length: left out whole
    target_tokens: dict[str, int]  # kind -> tokens with a label

    def summary(self) -> str:
        targets = ", ".join(f"{n} {k}" for k, n in self.target_tokens.items())
        return (f"{self.examples} tokenized examples ({targets} target tokens); {self.skipped_too_long} left out "
                "for not fitting in max_length with their end token")


def completion_end_id(tokenizer: Any, chat: bool) -> int:
    """The token that ends the student's answer: EOS, or under a chat template the special token the template
    writes right after an assistant message (<|im_end|> for ChatML, which is also SmolLM2's EOS)."""
    if chat:
        marker = "FAIR-END-MARKER"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False)
        after = tokenizer(text.split(marker, 1)[-1], add_special_tokens=False)["input_ids"]
        if after and after[0] in tokenizer.all_special_ids:
            return after[0]
    if tokenizer.eos_token_id is None:
        raise FairError(f"tokenizer {tokenizer.name_or_path!r} has no EOS token to end completions with")
    return tokenizer.eos_token_id


def tokenize_examples(examples: list[TrainExample], tokenizer: Any, max_length: int,
                      prompt_format: PromptFormat = "chat") -> tuple[list[Tokenized], TokenizeReport]:
    """Prompt ids exactly as the engines encode them at evaluation (fair.engines.base.encode_prompt), then the
    completion and its end token; the paper's format has no chat template and the BOS the tokenizer adds.
    An example that does not fit in max_length is left out and counted, not cut as the paper cut it: a
    completion trained without its end token teaches the student not to stop."""
    chat = prompt_format == "chat"
    end = completion_end_id(tokenizer, chat)
    out: list[Tokenized] = []
    report = TokenizeReport(0, 0, {"feedback": 0, "rationale": 0})
    for example in examples:
        prompt = encode_prompt(tokenizer, example.prompt, chat=chat)
        completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"] + [end]
        if len(prompt) + len(completion) > max_length:
            report.skipped_too_long += 1
            continue
        out.append(Tokenized(prompt + completion, [-100] * len(prompt) + completion, KIND_CODES[example.kind]))
        report.target_tokens[example.kind] += len(completion)
    report.examples = len(out)
    return out, report


# ----------------------------------------------------------------------------------------------------------
# Batches


def pack_rows(items: list[Tokenized], max_length: int) -> list[list[Tokenized]]:
    """First fit in the given order: each item goes into the first row with room for it."""
    rows: list[list[Tokenized]] = []
    used: list[int] = []
    for item in items:
        n = len(item.input_ids)
        if n > max_length:
            raise ValueError(f"an item of {n} tokens is longer than max_length {max_length}")
        k = next((k for k, u in enumerate(used) if u + n <= max_length), len(rows))
        if k == len(rows):
            rows.append([])
            used.append(0)
        rows[k].append(item)
        used[k] += n
    return rows


def collate(items: list[Tokenized], pad_id: int, pack: bool = False, max_length: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, labels (-100 on padding: never trained on), kinds (-1 where no label)
    and attention_mask [B,T]; packed (pack=True): several examples per row of at most max_length tokens, with
    position_ids restarting at 0 per example and seq_ids (0, 1, ... per row, -1 on padding) for
    attention_mask_4d, and no attention_mask. Both give num_rows (a 0-d tensor)."""
    rows = pack_rows(items, max_length) if pack else [[item] for item in items]
    width = max(sum(len(i.input_ids) for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, -100, dtype=torch.long)
    kinds = torch.full(shape, -1, dtype=torch.long)
    seq_ids = torch.full(shape, -1, dtype=torch.long)
    # Row padding gets positions 0, 1, ... as if one more sequence: varlen kernels (and transformers' packing
    # detection from position_ids) then see it as a separate sequence that no example attends to.
    position_ids = torch.zeros(shape, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for s, item in enumerate(row):
            n = len(item.input_ids)
            span = slice(start, start + n)
            input_ids[r, span] = torch.tensor(item.input_ids)
            labels[r, span] = torch.tensor(item.labels)
            seq_ids[r, span] = s
            position_ids[r, span] = torch.arange(n)
            kinds[r, span] = torch.where(labels[r, span] != -100, item.kind, -1)
            start += n
        position_ids[r, start:] = torch.arange(width - start)
    batch = {"input_ids": input_ids, "labels": labels, "kinds": kinds, "num_rows": torch.tensor(len(rows))}
    if pack:
        return batch | {"position_ids": position_ids, "seq_ids": seq_ids}
    return batch | {"attention_mask": (seq_ids >= 0).long()}


def single_row(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A packed batch laid end to end as one row [1, B*T], seq_ids kept distinct. Transformers 5.19's flash
    attention finds packed examples from position_ids only in a batch of one row (`_is_packed_sequence`);
    its sdpa/eager masks find them from position_ids only with use_cache=False. attention_mask_4d needs neither."""
    rows, width = batch["input_ids"].shape
    offsets = torch.arange(rows, device=batch["seq_ids"].device)[:, None] * width
    seq_ids = torch.where(batch["seq_ids"] >= 0, batch["seq_ids"] + offsets, -1)
    flat = {k: batch[k].reshape(1, -1) for k in ("input_ids", "labels", "kinds", "position_ids")}
    return flat | {"seq_ids": seq_ids.reshape(1, -1), "num_rows": batch["num_rows"]}


def attention_mask_4d(seq_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[B,1,T,T]: causal, within one example, never onto padding. Bool (True = attend) for transformers'
    sdpa attention, which takes a 4D mask as it is. Eager attention ADDS the mask to its scores, so it needs
    the additive form: pass the model's dtype for 0 / most-negative values. Padding queries see only
    themselves: a fully masked row can give NaN in some kernels, and NaN values leak even through 0 weights."""
    q, k = seq_ids[:, :, None], seq_ids[:, None, :]
    t = seq_ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seq_ids.device).tril()
    eye = torch.eye(t, dtype=torch.bool, device=seq_ids.device)
    mask = (causal & (q == k) & (q >= 0)) | (eye & (q < 0))
    mask = mask[:, None]
    if dtype is None:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
