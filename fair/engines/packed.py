"""bf16 weights packed once for oneDNN, for as long as a generation runs.

On a CPU, torch's bf16 `linear` is oneDNN's matmul over the weight as the model stores it, in the layout
oneDNN does not compute in; `torch.ops.mkldnn._reorder_linear_weight` makes that layout once (what
torch.compile's freezing does on CPUs), and `torch.ops.mkldnn._linear_pointwise` multiplies by it. Inside
`packed_linears(model)` every bf16 `nn.Linear` of the model (the output layer included) answers through its
packed copy; on leaving, the modules are as they were and the copies are let go. The results are the same
bits as the module's own forward (tests/test_continuous.py checks it at every row count the engine uses), so
packing changes the speed of a decode step, never a token.

It is a no-op where it would not help or cannot run: float32 weights (MKL's packed fp32 path measured no
faster), a GPU, or a torch built without oneDNN's bf16 support. The copies cost as much memory as the
weights of the packed layers while they live (0.27 GB for SmolLM2-135M in bf16, its tied output layer
counted twice), which is why they are made per generation and not kept with the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def packing_available(model: nn.Module) -> bool:
    """bf16 weights on a CPU, and a torch whose oneDNN computes in bf16 here."""
    parameter = next(model.parameters())
    if parameter.dtype != torch.bfloat16 or parameter.device.type != "cpu":
        return False
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight")
            and hasattr(mkldnn, "_linear_pointwise") and bool(mkldnn._is_mkldnn_bf16_supported()))


def packed_forward(weight: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return forward


@contextmanager
def packed_linears(model: nn.Module, rows: int) -> Iterator[None]:
    """Within the block, the model's bf16 linear layers multiply by weights packed for about `rows` rows a
    call (a hint for oneDNN's layout; any row count gives the same results)."""
    if not packing_available(model):
        yield
        return
    swapped = []
    try:
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight.dtype == torch.bfloat16:
                packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), rows)
                bias = None if module.bias is None else module.bias.detach()
                module.forward = packed_forward(packed, bias)  # an instance attribute: nn.Module calls it
                swapped.append(module)
        yield
    finally:
        for module in swapped:
            del module.forward  # the class's forward again
