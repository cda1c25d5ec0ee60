"""Attention off CUDA: writes each group's new K/V into its slab and attends through SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kakeya.runtime.cpu import plan as cpu_attention
from kakeya.runtime.forward.rows import RowGroup, StepLayout
from kakeya.runtime.forward.session_kv import SessionKV


def attend_cpu(layout: StepLayout, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None) -> torch.Tensor:
    """Off CUDA: writes every group's new K/V and attends. query/key/value: [1, heads, T, head_dim]
    (transformers' layout); returns [1, T, heads, head_dim]."""
    if layout.cpu_views is not None:
        return cpu_attention.attend_step(layout.cpu_views, layer, query, key, value, scaling)
    out = query.new_zeros(1, query.shape[2], query.shape[1], query.shape[3])
    plans = layout.cpu_plans or (None,) * len(layout.groups)
    cuts = layout.cpu_cuts or (None,) * len(layout.groups)
    for group, plan, cut in zip(layout.groups, plans, cuts):
        if cut is None:
            _write(group, layer, key, value)
        else:
            rows = slice(group.row_start, group.row_start + group.num_rows)
            cut.new_keys[layer].copy_(key[0, :, rows])
            cut.new_values[layer].copy_(value[0, :, rows])
        if plan is not None:
            views = (None, None) if cut is None else (cut.keys[layer], cut.values[layer])
            cpu_attention.attend(plan, group.kv.slab, layer, query, out, scaling, *views)
        elif cut is not None and group.num_rows == 1:
            keys = cut.keys[layer]
            attended = F.scaled_dot_product_attention(
                cpu_attention.by_kv_head(query[:, :, group.row_start:group.row_start + 1], keys.shape[0]),
                keys[None], cut.values[layer][None], scale=scaling)
            out[0, group.row_start] = attended.reshape(-1, attended.shape[-1])
        elif layout.deterministic or group.num_rows == 1:
            for row in range(group.num_rows):
                _attend_row(group, layer, row, query, out, scaling)
        else:
            _attend_group(group, layer, query, out, scaling)
    return out


def _write(group: RowGroup, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
    kv = group.kv
    lo = kv.storage_index(group.first_position)
    rows = slice(group.row_start, group.row_start + group.num_rows)
    kv.slab[layer, 0, :, lo:lo + group.num_rows] = key[0, :, rows]
    kv.slab[layer, 1, :, lo:lo + group.num_rows] = value[0, :, rows]


def _visible(kv: SessionKV, layer: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly the keys/values a query at `position` sees, as views where they are contiguous."""
    end = kv.storage_index(position) + 1
    first = kv.first_visible(position)
    keys, values = kv.slab[layer, 0], kv.slab[layer, 1]
    if first == kv.sink_tokens:
        return keys[:, :end], values[:, :end]
    # Past the window, sinks and window are gathered, whether or not compaction already made
    # them adjacent: the same call for a given position keeps results independent of its timing.
    lo = kv.storage_index(first)
    sinks = slice(0, kv.sink_tokens)
    return torch.cat((keys[:, sinks], keys[:, lo:end]), 1), torch.cat((values[:, sinks], values[:, lo:end]), 1)


def _attend_row(group: RowGroup, layer: int, row: int, query, out, scaling) -> None:
    keys, values = _visible(group.kv, layer, group.first_position + row)
    r = group.row_start + row
    attended = F.scaled_dot_product_attention(
        cpu_attention.by_kv_head(query[:, :, r:r + 1], keys.shape[0]), keys[None], values[None], scale=scaling
    )
    out[0, r] = attended.reshape(-1, attended.shape[-1])


def _attend_group(group: RowGroup, layer: int, query, out, scaling) -> None:
    """All rows of a session in one call, masked by position (bottom-right causal, window)."""
    kv = group.kv
    last = group.first_position + group.num_rows - 1
    end = kv.storage_index(last) + 1
    keys, values = kv.slab[layer, 0, :, :end], kv.slab[layer, 1, :, :end]
    device = query.device
    key_pos = torch.arange(end, device=device)
    if kv.window_start > kv.sink_tokens:
        key_pos = torch.where(key_pos < kv.sink_tokens, key_pos, key_pos - kv.sink_tokens + kv.window_start)
    query_pos = torch.arange(group.first_position, last + 1, device=device)[:, None]
    mask = key_pos[None] <= query_pos
    if kv.window_tokens:
        mask &= (key_pos[None] < kv.sink_tokens) | (key_pos[None] > query_pos - kv.window_tokens)
    rows = slice(group.row_start, group.row_start + group.num_rows)
    attended = F.scaled_dot_product_attention(
        query[:, :, rows], keys[None], values[None], attn_mask=mask[None, None], scale=scaling, enable_gqa=True
    )
    out[0, rows] = attended[0].transpose(0, 1)
