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
from typing import Sequence

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
    path (enable_gqa) copies K/V out per query head instead, which makes each decode call slower
    (docs/benchmarks.md). Each row still attends alone:
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
        count = stop - position + 1
        # Row i (at position + i) sees entries up to position + i: -inf from diagonal position + 1.
        mask = torch.full((count, keys), float("-inf"), dtype=dtype, device=device).triu_(position + 1)
        calls.append(BucketCall(row, row + count, keys, mask[:, None, None]))
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


@dataclass(frozen=True, slots=True)
class StepViews:
    """A whole step's calls, with every slab view they use cut once for all layers: a deterministic
    step's bucketed calls (step_views), or a decode step's one exact call per session (decode_views).

    Per session and layer, attend() and its caller cost ~25 small torch calls (slicing, expanding,
    copying into the output) around the one SDPA call that does the work: an 8-session decode step
    makes ~6,000 of them. With the views cut here, a layer is one copy of every group's new K/V
    (torch._foreach_copy_), one split of the queries, one SDPA call per bucket call and one cat.
    Each SDPA call is the one attend() makes (same operands, same shapes), so the bits are the same.
    """

    group_rows: list[int]
    call_rows: list[int]
    new_kv: list[list[torch.Tensor]]  # per layer: each group's new-key slab view, then new-value
    # per call: its mask (None: every key visible) and its [rows, kv_heads, num_keys, head_dim] key
    # and value views, per layer
    calls: list[tuple[torch.Tensor | None, Sequence[torch.Tensor], Sequence[torch.Tensor]]]


def step_views(groups, plans, cuts, num_rows: int) -> StepViews | None:
    """None where the step needs attend()'s general path: a bounded group (no plan or cut), padding
    rows, or a slab whose capacity is short of a bucket. Clears the entries the calls read past each
    group's history (see attend()) before the forward, which writes none of them."""
    if not groups or any(plan is None or cut is None for plan, cut in zip(plans, cuts)):
        return None
    row = 0
    for group, plan in zip(groups, plans):
        if group.row_start != row or plan.calls[-1].num_keys > group.kv.slab.shape[3]:
            return None
        row += group.num_rows
    if row != num_rows:
        return None
    new_keys, new_values, calls = [], [], []
    for group, plan, cut in zip(groups, plans, cuts):
        slab = group.kv.slab
        if plan.num_written < plan.calls[-1].num_keys:
            slab[:, :, :, plan.num_written:plan.calls[-1].num_keys].zero_()
        new_keys.append(cut.new_keys.unbind(0))
        new_values.append(cut.new_values.unbind(0))
        for call in plan.calls:
            rows, n = call.row_stop - call.row_start, call.num_keys
            keys, values = (part[:, None, :, :n] for part in (cut.keys, cut.values))
            shape = (keys.shape[0], rows, *keys.shape[2:])
            calls.append((call.mask, keys.expand(shape).unbind(0), values.expand(shape).unbind(0)))
    return _views(groups, new_keys, new_values, calls)


def decode_views(groups, cuts, num_rows: int) -> StepViews | None:
    """Outside deterministic mode, a step of one row per session (a decode step) attends each row
    over exactly the keys it sees, which is the whole cut: no mask, no bucket. The same SDPA call
    attention.py makes for such a row, without its per-session indexing around it. None where a
    group has more rows or is bounded (no cut)."""
    if len(groups) != num_rows or any(g.num_rows != 1 or cut is None for g, cut in zip(groups, cuts)):
        return None
    if any(g.row_start != row for row, g in enumerate(groups)):
        return None
    new_keys = [cut.new_keys.unbind(0) for cut in cuts]
    new_values = [cut.new_values.unbind(0) for cut in cuts]
    calls = [(None, cut.keys[:, None].unbind(0), cut.values[:, None].unbind(0)) for cut in cuts]
    return _views(groups, new_keys, new_values, calls)


def _views(groups, new_keys, new_values, calls) -> StepViews:
    new_kv = [[k[layer] for k in new_keys] + [v[layer] for v in new_values] for layer in range(len(new_keys[0]))]
    return StepViews([g.num_rows for g in groups], [c[1][0].shape[0] for c in calls], new_kv, calls)


def attend_step(views: StepViews, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                scaling: float | None) -> torch.Tensor:
    """Writes the layer's new K/V and attends; query/key/value: [1, heads, T, head_dim]; returns
    [1, T, heads, head_dim]."""
    torch._foreach_copy_(views.new_kv[layer], key[0].split(views.group_rows, 1) + value[0].split(views.group_rows, 1))
    _, heads, rows, head_dim = query.shape
    kv_heads = key.shape[1]
    queries = query[0].transpose(0, 1).reshape(rows, kv_heads, heads // kv_heads, head_dim).split(views.call_rows)
    outs = [F.scaled_dot_product_attention(q, keys[layer], values[layer], attn_mask=mask, scale=scaling)
            for q, (mask, keys, values) in zip(queries, views.calls)]
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.reshape(1, rows, heads, head_dim)
