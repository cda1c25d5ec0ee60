"""Slab attention for layers that ask more than causal softmax: a sliding window, logit
soft-capping, attention sinks (forward/layer_attention.py). Off the CUDA kernels, on any device.

A query at position p of a layer with window W sees keys p - W + 1 .. p, as transformers' sliding
mask does. Soft-capping and sinks need the logits themselves, so those layers attend in plain torch
ops in transformers' eager order (scale, cap, mask, sinks, fp32 softmax); window-only layers go
through SDPA. Deterministic mode attends row by row over exactly the keys the row sees: the same
call for a position however its history was appended and whatever shares the step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kakeya.runtime.forward.layer_attention import LayerAttention
from kakeya.runtime.forward.rows import RowGroup, StepLayout


def attend_windowed(layout: StepLayout, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    scaling: float | None, rule: LayerAttention, sinks: torch.Tensor | None) -> torch.Tensor:
    """Writes every group's new K/V and attends. query/key/value: [1, heads, T, head_dim];
    returns [1, T, heads, head_dim]. No sinks of bounded mode (refused for such models); a slab may
    have dropped what no layer sees any more (forward_path.kept_window)."""
    scaling = scaling if scaling is not None else 1 / math.sqrt(query.shape[-1])
    out = query.new_zeros(1, query.shape[2], query.shape[1], query.shape[3])
    for group in layout.groups:
        rows = slice(group.row_start, group.row_start + group.num_rows)
        kv = group.kv
        slab = kv.slab
        lo = kv.storage_index(group.first_position)
        slab[layer, 0, :, lo:lo + group.num_rows] = key[0, :, rows]
        slab[layer, 1, :, lo:lo + group.num_rows] = value[0, :, rows]
        if layout.deterministic or group.num_rows == 1:
            for row in range(group.num_rows):
                position = group.first_position + row
                start = 0 if rule.window is None else max(0, position - rule.window + 1)
                keys = slice(kv.storage_index(start), kv.storage_index(position) + 1)
                r = group.row_start + row
                attended = _attend(query[:, :, r:r + 1], slab[layer, 0, :, keys], slab[layer, 1, :, keys], None,
                                   scaling, rule, sinks)
                out[0, r] = attended[0, :, 0]
        else:
            out[0, rows] = _attend_group(group, layer, query[:, :, rows], scaling, rule, sinks)[0].transpose(0, 1)
    return out


def _attend_group(group: RowGroup, layer: int, query: torch.Tensor, scaling: float, rule: LayerAttention,
                  sinks: torch.Tensor | None) -> torch.Tensor:
    first, last = group.first_position, group.first_position + group.num_rows - 1
    start = 0 if rule.window is None else max(0, first - rule.window + 1)
    key_pos = torch.arange(start, last + 1, device=query.device)[None]
    query_pos = torch.arange(first, last + 1, device=query.device)[:, None]
    mask = key_pos <= query_pos
    if rule.window is not None:
        mask &= key_pos > query_pos - rule.window
    kv = group.kv
    keys = slice(kv.storage_index(start), kv.storage_index(last) + 1)
    return _attend(query, kv.slab[layer, 0, :, keys], kv.slab[layer, 1, :, keys], mask, scaling, rule, sinks)


def _attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
            scaling: float, rule: LayerAttention, sinks: torch.Tensor | None) -> torch.Tensor:
    """query: [1, heads, R, head_dim]; keys/values: [kv_heads, n, head_dim]; mask: [R, n] (True: seen)
    or None (every key); returns [1, heads, R, head_dim]."""
    if rule.softcap is None and sinks is None:
        return F.scaled_dot_product_attention(query, keys[None], values[None],
                                              attn_mask=None if mask is None else mask[None, None],
                                              scale=scaling, enable_gqa=True)
    group = query.shape[1] // keys.shape[0]
    keys, values = keys.repeat_interleave(group, 0), values.repeat_interleave(group, 0)
    logits = torch.matmul(query[0], keys.transpose(1, 2)) * scaling  # [heads, R, n]
    if rule.softcap is not None:
        logits = torch.tanh(logits / rule.softcap) * rule.softcap
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        sink = sinks.to(logits.dtype).reshape(-1, 1, 1).expand(-1, logits.shape[1], 1)
        combined = torch.cat((logits, sink), -1)
        combined = combined - combined.amax(-1, keepdim=True)
        probs = F.softmax(combined, dim=-1, dtype=combined.dtype)[..., :-1]
    else:
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    return torch.matmul(probs.to(values.dtype), values)[None]
