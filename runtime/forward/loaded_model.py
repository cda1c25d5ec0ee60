"""A model loaded for serving, and the facts about it the forwards and the KV memory need."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kakeya.runtime.forward.layer_attention import LayerAttention


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: torch.nn.Module
    model_id: str
    device: torch.device
    dtype: torch.dtype
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_context_tokens: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    architecture: str = ""  # the config's model_type
    layers: tuple[LayerAttention, ...] = ()  # what each layer's attention asks (engine/attention_probe.py)
    weights_origin: str = ""  # a GGUF file's tensor types, which loading dequantized
