"""Packed examples without a mask: an attention function that runs torch's sdpa once per example.

A packed micro-batch is laid end to end in one row (data.single_row) and each example attends causally to
itself only. With a [T,T] mask, sdpa computes every pair of positions and drops the masked ones, copies the
grouped key/value heads (the GQA path needs no mask), and the wider the row the more it wastes: a row of four
examples costs four times the attention of the four alone. Here each example is its own causal sdpa call
(no mask, no copies, no padding); flash_attention_2 does the same from position_ids where it is installed.
The boundaries come in as `example_bounds`, a tuple of ints passed through the model's forward kwargs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

VARLEN = "fair_sdpa_varlen"
SUPPORTED = {
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
}  # plain causal attention: no sliding window, no soft-capping


def varlen_supported(model) -> bool:
    config = model.config
    return config.model_type in SUPPORTED and not getattr(config, "sliding_window", None)


def varlen_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, example_bounds=(), **_
):
    """query [1,H,T,D], key/value [1,Hkv,T,D]; example_bounds (0, end_1, ..., T). Returns [1,T,H,D], as
    transformers' attention functions do."""
    if attention_mask is not None or query.shape[0] != 1 or not example_bounds:
        raise ValueError(f"{VARLEN} takes one packed row, its example_bounds and no mask")
    gqa = query.shape[1] != key.shape[1]
    out = [
        F.scaled_dot_product_attention(
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=gqa,
        )
        for s, e in zip(example_bounds[:-1], example_bounds[1:], strict=True)
    ]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def example_bounds(seq_ids: torch.Tensor) -> tuple[int, ...]:
    """Where each example (and the row padding after the last, a sequence of its own) starts, and the end: from
    single_row's seq_ids [1,T], distinct per example, -1 on padding."""
    ids = seq_ids[0]
    starts = (torch.nonzero(ids[1:] != ids[:-1]).flatten() + 1).tolist()
    return (0, *starts, ids.numel())


AttentionInterface.register(VARLEN, varlen_attention)
