"""A model loaded for serving, and the facts about it the forwards and the KV memory need."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from kakeya.runtime.forward.layer_attention import LayerAttention


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What a host needs to know about the served model, without the model: the facts GetRuntimeInfo
    reports and requests are checked against. An engine process sends these to its front."""

    model_id: str
    device: torch.device
    dtype: torch.dtype
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_context_tokens: int
    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, loaded: "ModelFacts") -> "ModelFacts":
        """Just the facts of `loaded` (a LoadedModel is one), without its model."""
        return cls(**{f.name: getattr(loaded, f.name) for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class LoadedModel(ModelFacts):
    model: torch.nn.Module
    architecture: str = ""  # the config's model_type
    layers: tuple[LayerAttention, ...] = ()  # what each layer's attention asks (engine/attention_probe.py)
    weights_origin: str = ""  # a GGUF file's tensor types, which loading dequantized
