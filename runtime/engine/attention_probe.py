"""Reads, once at load, what every layer's attention asks of the runtime, from transformers' own calls.

A forward of two tokens runs with a recording attention function registered under its own name.
Each layer's call shows the K/V shape it stores and the arguments its implementation hands the
attention interface (a sliding window, a logit soft-cap, attention sinks), whatever the family's
config calls them. A model whose layers do not all attend through that interface (state-space or
linear-attention layers, say), whose layers store K/V of different shapes, or that passes an
argument the runtime does not honour is refused with what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface

from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.forward.layer_attention import LayerAttention

PROBE_NAME = "kakeya_probe"
# Arguments the runtime reads elsewhere (positions, its own layout) or that change nothing at
# inference; any other argument a layer passes with a value is refused by name.
IGNORED = frozenset({"position_ids", "use_cache", "output_attentions", "output_router_logits", "kakeya_layout",
                     "kakeya_probe", "is_causal", "cache_position", "return_dict"})


@dataclass(frozen=True, slots=True)
class _Call:
    layer: int | None
    heads: int
    kv_heads: int
    head_dim: int
    value_dim: int
    attention: LayerAttention
    unknown: tuple[str, ...]


def _record(module, query, key, value, attention_mask, scaling=None, dropout=0.0, sliding_window=None,
            softcap=None, s_aux=None, kakeya_probe: list | None = None, **kwargs):
    unknown = tuple(sorted(k for k, v in kwargs.items() if k not in IGNORED and v is not None and v is not False))
    window = int(sliding_window) if sliding_window else None
    attention = LayerAttention(window, float(softcap) if softcap else None, s_aux is not None)
    kakeya_probe.append(_Call(getattr(module, "layer_idx", None), query.shape[1], key.shape[1], key.shape[3],
                              value.shape[3], attention, unknown))
    return torch.zeros_like(query).transpose(1, 2), None


AttentionInterface.register(PROBE_NAME, _record)


def probe_layers(model: torch.nn.Module, num_layers: int) -> tuple[tuple[LayerAttention, ...], int, int]:
    """(each layer's attention, KV heads, head dim), or FailedPrecondition naming what is missing."""
    calls: list[_Call] = []
    config = model.config
    # Every config object the layers read: a truncated draft's modules keep the verifier's config.
    configs = {id(c): c for c in [config] + [getattr(m, "config", None) for m in model.modules()]
               if hasattr(c, "_attn_implementation")}
    previous = {key: c._attn_implementation for key, c in configs.items()}
    device = next(model.parameters()).device
    try:
        for c in configs.values():
            c._attn_implementation = PROBE_NAME
        with torch.inference_mode():
            model(input_ids=torch.tensor([[1, 2]], device=device), position_ids=torch.tensor([[0, 1]], device=device),
                  use_cache=False, kakeya_probe=calls)
    except (TypeError, ValueError) as exc:
        raise FailedPrecondition(f"model type {config.model_type!r} does not take its attention from transformers' "
                                 f"attention interface with the runtime's arguments ({exc})") from exc
    finally:
        for key, c in configs.items():
            c._attn_implementation = previous[key]
    return _check(calls, config.model_type, num_layers)


def _check(calls: list[_Call], model_type: str, num_layers: int) -> tuple[tuple[LayerAttention, ...], int, int]:
    seen = sorted(c.layer for c in calls if c.layer is not None)
    if seen != list(range(num_layers)):
        missing = sorted(set(range(num_layers)) - set(seen))
        raise FailedPrecondition(
            f"model type {model_type!r}: layers {_span(missing) if missing else '(shared or unnumbered)'} do not "
            "attend through transformers' attention interface (state-space, linear-attention or shared-KV "
            "layers), so the runtime cannot hold their state")
    calls.sort(key=lambda c: c.layer)
    first = calls[0]
    for call in calls:
        if call.unknown:
            raise FailedPrecondition(f"model type {model_type!r}: layer {call.layer} passes attention arguments "
                                     f"the runtime does not honour: {', '.join(call.unknown)}")
        if call.value_dim != call.head_dim:
            raise FailedPrecondition(f"model type {model_type!r}: values ({call.value_dim}) and keys "
                                     f"({call.head_dim}) of different head sizes")
        if (call.kv_heads, call.head_dim) != (first.kv_heads, first.head_dim):
            raise FailedPrecondition(f"model type {model_type!r}: layer {call.layer} stores {call.kv_heads} KV "
                                     f"heads of {call.head_dim}, layer 0 {first.kv_heads} of {first.head_dim}; "
                                     "the runtime's KV slabs need one shape for every layer")
    return tuple(c.attention for c in calls), first.kv_heads, first.head_dim


def _span(layers: list[int]) -> str:
    return ", ".join(map(str, layers[:8])) + (", ..." if len(layers) > 8 else "")
