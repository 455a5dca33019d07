"""Stage 3 data: committee records -> (prompt, completion) examples -> token ids -> batches.

Per mistake, as in the paper's data.py, one feedback example (the student learns to explain its own mistake)
and one rationale example (it learns the teacher's solution). A mistake is used only when it has both, as
the paper's `assert cur_feedback and cur_rationale` did; every mistake left out is counted by reason. A text
counts only when it is whole (fair/records.py's usable_text): never a failed or refused request, nor one cut
off at max_tokens, feedback included, since the student would learn to end its explanation mid-sentence.

Two prompt formats. 'chat' (ours): the prompt is the user turn of the student's chat template, and the
rationale prompt is exactly `task.prompt`, the prompt the student is evaluated with. 'paper': the paper's
"### Instruction / ### Input / ### Response" text without a chat template, for parity runs.

Unlike the paper, padding is never trained on (its labels padded with EOS ids), and batches can be packed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from fair import paper
from fair.engines.base import encode_prompt
from fair.errors import FairError
from fair.jsonl import read_jsonl
from fair.recipes import FILTERS, PAPER_FILTER, Filter, check_filter, finds_gold, recorded_filter, trainable
from fair.records import StudentAnswer, fence, gold_hint, question_block, teacher_of, usable_text
from fair.tasks import Task

Kind = Literal["feedback", "rationale"]
PromptFormat = Literal["chat", "paper"]
FEEDBACK, RATIONALE = 0, 1  # integer codes used in tensors
KIND_CODES = {"feedback": FEEDBACK, "rationale": RATIONALE}
MODES = ("mixed", "all")  # or a teacher's name: whose texts, and how many a mistake


@dataclass(frozen=True)
class TrainExample:
    kind: Kind
    mistake_id: str
    teacher: str  # whose text the completion is
    prompt: str  # user-side text, before any chat template
    completion: str


@dataclass
class BuildReport:
    mistakes: int
    feedback_examples: int = 0
    rationale_examples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> mistakes left out for it
    per_teacher: dict[str, dict[str, int]] = field(default_factory=dict)  # teacher -> kind -> examples
    mode: str = ""
    filter: str = ""
    seed: int = 0
    prompt_format: str = ""

    def summary(self) -> str:
        used = self.mistakes - sum(self.skipped.values())
        lines = [f"{self.mistakes} mistakes, {used} used (mode {self.mode}, filter {self.filter}, seed {self.seed}, "
                 f"{self.prompt_format} prompts): {self.feedback_examples} feedback + "
                 f"{self.rationale_examples} rationale examples"]
        lines += [f"  skipped {n}: {reason}" for reason, n in self.skipped.items()]
        lines += [f"  from {t}: {c['feedback']} feedback, {c['rationale']} rationale"
                  for t, c in self.per_teacher.items() if any(c.values())]
        return "\n".join(lines)


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
        for key in ("id", "mistake", "feedback", "rationales"):
            if not isinstance(record.get(key), str if key == "id" else dict):
                raise FairError(f"{where}: missing or malformed field {key!r}")
        for key in ("feedback", "rationales"):
            for name, entry in record[key].items():
                if not isinstance(entry, dict) or "text" not in entry:
                    raise FairError(f"{where}: {key}.{name} must be an object with a 'text' field")
        mistake = StudentAnswer.from_json(record["mistake"], f"{where} field 'mistake'")
        if mistake.task != task.name:
            raise FairError(f"{where}: a {mistake.task!r} mistake, but training task {task.name!r}")
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


def committee_filter(records: Iterable[dict], where: str) -> Filter:
    """The filter the committee ran with (fair/recipes.py; "review" for the paper's files, or no records): training's
    default."""
    filters = {recorded_filter(r) for r in records} or {PAPER_FILTER}
    if len(filters) > 1:
        raise FairError(f"{where}: records written under several filters ({', '.join(sorted(filters))}); "
                        f"pass --filter")
    return filters.pop()


# ----------------------------------------------------------------------------------------------------------
# Examples


def build_examples(records: list[dict], task: Task, mode: str, seed: int, prompt_format: PromptFormat = "chat",
                   filter: Filter = "review") -> tuple[list[TrainExample], BuildReport]:
    """Which texts of each mistake become examples: `mode` says whose and how many, `filter` which rationales qualify.

    mode 'mixed' (the paper's FAIR): one seeded random feedback and one random qualifying rationale; 'all': every
    feedback and every qualifying rationale; a teacher's name: that teacher's feedback and rationale (the paper's
    single-teacher baselines, which were unreviewed: `filter none`).
    filter 'review' (the paper's): rationales the peers accepted; 'gold': rationales in which the task's grader,
    the one that mined the mistakes, finds the gold answer (free: no review request); 'gold+review': both;
    'none': every whole rationale. A teacher's several samples (`fair committee --samples`) are all its own: 'all'
    takes each qualifying one (once, where two coincide), 'mixed' draws one among every teacher's."""
    if prompt_format not in ("chat", "paper"):
        raise FairError(f"prompt format must be 'chat' or 'paper', got {prompt_format!r}")
    check_filter(filter)
    for record in records:
        if not trainable(filter, recorded_filter(record)):
            raise FairError(f"record {record['id']}: the committee ran with --filter {recorded_filter(record)}, "
                            f"which leaves out the reviews --filter {filter} needs; choose {', '.join(f for f in FILTERS if trainable(f, recorded_filter(record)))}")
    teachers = teachers_of(records)
    if mode not in MODES and mode not in teachers:
        raise FairError(f"unknown teacher mode {mode!r}: choose {', '.join(MODES)} or a teacher ({', '.join(teachers)})")
    rng = random.Random(seed)  # private: the same (records, mode, filter, seed) always gives the same examples
    report = BuildReport(mistakes=len(records), mode=mode, filter=filter, seed=seed, prompt_format=prompt_format,
                         per_teacher={t: {"feedback": 0, "rationale": 0} for t in teachers})
    skipped: Counter[str] = Counter()
    examples: list[TrainExample] = []
    for record in records:
        mistake = StudentAnswer.from_json(record["mistake"], f"record {record['id']}")
        fb, rat, reason = _choose(record, mode, filter, rng, lambda text, m=mistake: finds_gold(task, m, text))
        if reason:
            skipped[reason] += 1
            continue
        fb_prompt, rat_prompt = _prompts(task, mistake, prompt_format)
        for kind, prompt, chosen in (("feedback", fb_prompt, fb), ("rationale", rat_prompt, rat)):
            for teacher, text in chosen:
                examples.append(TrainExample(kind, record["id"], teacher, prompt, text))
                report.per_teacher[teacher][kind] += 1
    report.feedback_examples = sum(e.kind == "feedback" for e in examples)
    report.rationale_examples = len(examples) - report.feedback_examples
    report.skipped = dict(skipped)
    return examples, report


Chosen = list[tuple[str, str]]  # (teacher, text)
NO_RATIONALE = {"review": "no accepted rationale", "gold": "no rationale with the gold answer",
                "gold+review": "no accepted rationale with the gold answer", "none": "rationale failed"}


def _choose(record: dict, mode: str, filter: Filter, rng: random.Random,
            finds_gold: Callable[[str], bool]) -> tuple[Chosen, Chosen, str | None]:
    """(feedbacks, rationales, None) for one mistake, or a reason to skip it."""
    if mode not in MODES and (mode not in record["feedback"] or mode not in record["rationales"]):
        return [], [], "teacher missing"
    feedbacks = {n: t for n, e in record["feedback"].items() if (t := usable_text(e)) and mode in (*MODES, n)}
    rationales: dict[tuple[str, str], str] = {}  # (teacher, text) -> key: a teacher's coinciding samples are one
    for key, entry in record["rationales"].items():
        if (text := usable_text(entry)) and mode in (*MODES, teacher_of(key)):
            rationales.setdefault((teacher_of(key), text), key)
    if "review" in filter:  # `accepted` is the peers' verdict (and the gold check's, after a gold+review run)
        rationales = {c: k for c, k in rationales.items() if record["rationales"][k].get("accepted")}
    if "gold" in filter:
        rationales = {c: k for c, k in rationales.items() if finds_gold(c[1])}
    if mode == "mixed":
        # Feedback first, then rationale: the paper's order of random.choice calls, so that on the paper's files
        # with its seed the same texts are drawn (a choice from an empty list draws no random number).
        fb = [rng.choice(list(feedbacks.items()))] if feedbacks else []
        rat = [rng.choice(list(rationales))] if rationales else []
    else:
        fb, rat = list(feedbacks.items()), list(rationales)
    if not rationales:
        return [], [], NO_RATIONALE[filter]
    return fb, rat, None if feedbacks else "feedback failed"


def chat_feedback_prompt(task: Task, mistake: StudentAnswer) -> str:
    return (
        "A student answered the question below incorrectly. Point out the mistakes in the student's answer.\n\n"
        f"Question:\n{question_block(task, mistake)}\n\n"
        f"Student's answer:\n{fence(mistake.prediction)}\n\n"
        f"Hint: the correct final answer is {gold_hint(task, mistake)}."
    )


def _prompts(task: Task, mistake: StudentAnswer, prompt_format: PromptFormat) -> tuple[str, str]:
    """(feedback prompt, rationale prompt) for one mistake."""
    if prompt_format == "chat":
        return chat_feedback_prompt(task, mistake), task.prompt(mistake.example())
    return paper.training_prompts(task, mistake)


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
