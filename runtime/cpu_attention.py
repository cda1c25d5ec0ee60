"""Deterministic CPU attention over bucketed key counts: a session's rows in one call per bucket.

Deterministic mode needs a row's attention to be one fixed computation of its position, however
the history was appended and whatever shares the step. Calling SDPA once per row over exactly its
visible keys gives that, but costs a call per row and layer (30,720 for eight 128-token prompts).
Here a query at position p attends over the first round_up(p + 1, BUCKET_TOKENS) slab entries,
the ones past p masked out: the same call for a decode row and a prefill row at p. The rows of a
session that share a bucket go in one SDPA call as a batch of one-query problems over the same
keys; the CPU flash kernel computes each batch entry on its own, so every row's result is bitwise
that of its call alone (unit/test_cpu_attention.py checks it). Full attention only: bounded mode
keeps the per-row path in attention.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Masked keys cost work: a row attends over at most BUCKET_TOKENS - 1 extra entries.
BUCKET_TOKENS = 32


@dataclass(frozen=True, slots=True)
class BucketCall:
    """Rows [row_start, row_stop) of the step, all attending over the first num_keys slab entries."""

    row_start: int
    row_stop: int
    num_keys: int
    mask: torch.Tensor  # [rows, 1, 1, num_keys], additive: 0 up to each row's position, -inf past it


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """One session's calls; slab entries [num_written, num_keys of the last call) are cleared first."""

    num_written: int
    calls: tuple[BucketCall, ...]


def by_kv_head(queries: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """[B, heads, 1, head_dim] one-row queries as [B, kv_heads, group, head_dim]: the query heads
    that share a KV head become that head's rows, so SDPA solves one problem per KV head. Its GQA
    path (enable_gqa) copies K/V out per query head instead: on 2 threads, SmolLM2's heads, a call
    took 28 against 46 us at 160 keys and 36 against 60 at 320; the decode attention of an
    8-session step (240 calls, ~330 keys) 19.2 against 22.2 ms. Each row still attends alone:
    same dot products, same softmax, though not the GQA path's bits."""
    batch, heads, _, head_dim = queries.shape
    return queries.reshape(batch, num_kv_heads, heads // num_kv_heads, head_dim)


def num_keys(position: int) -> int:
    return (position // BUCKET_TOKENS + 1) * BUCKET_TOKENS


def plan_group(row_start: int, num_rows: int, first_position: int, dtype: torch.dtype,
               device: torch.device | str = "cpu") -> GroupPlan:
    """Made once per step (masks are shared by every layer, on the slab's device, e.g. MPS with
    --deterministic); positions are storage indices."""
    calls = []
    row, position, last = row_start, first_position, first_position + num_rows - 1
    while position <= last:
        keys = num_keys(position)
        stop = min(last, keys - 1)
        positions = torch.arange(position, stop + 1)
        visible = torch.arange(keys)[None] <= positions[:, None]
        mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, float("-inf"))
        count = stop - position + 1
        calls.append(BucketCall(row, row + count, keys, mask[:, None, None].to(device)))
        row, position = row + count, stop + 1
    return GroupPlan(first_position + num_rows, tuple(calls))


def attend(plan: GroupPlan, slab: torch.Tensor, layer: int, query: torch.Tensor, out: torch.Tensor,
           scaling: float | None, layer_keys: torch.Tensor | None = None,
           layer_values: torch.Tensor | None = None) -> None:
    """query: [1, heads, T, head_dim]; out: [1, T, heads, head_dim]; the group's K/V already written.
    layer_keys/values: this layer's slab entries, [kv_heads, n, head_dim] from entry 0, cut once a
    step (attention.SlabCut); by default cut here."""
    capacity = slab.shape[3]
    clear_to = min(plan.calls[-1].num_keys, capacity)
    if layer == 0 and plan.num_written < clear_to:
        # Masked entries still enter the products (0 * value): they must hold finite numbers, and
        # entries past the history may hold anything (fresh memory, rolled-back rows). Every layer
        # is cleared at once: no row past num_written is written in this step.
        slab[:, :, :, plan.num_written:clear_to].zero_()
    if layer_keys is None:
        layer_keys, layer_values = slab[layer, 0], slab[layer, 1]
    for call in plan.calls:
        keys, values = layer_keys[:, :call.num_keys], layer_values[:, :call.num_keys]
        if call.num_keys > capacity:
            # A slab whose capacity is no multiple of the bucket (small KV blocks): pad with zeros,
            # which the kernel sees exactly as it would see cleared entries.
            pad = call.num_keys - capacity
            keys, values = F.pad(keys, (0, 0, 0, pad)), F.pad(values, (0, 0, 0, pad))
        rows = call.row_stop - call.row_start
        queries = query[0, :, call.row_start:call.row_stop].transpose(0, 1).unsqueeze(2)
        attended = F.scaled_dot_product_attention(
            by_kv_head(queries, keys.shape[0]), keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1),
            attn_mask=call.mask, scale=scaling,
        )
        out[0, call.row_start:call.row_stop] = attended.reshape(rows, -1, attended.shape[-1])
