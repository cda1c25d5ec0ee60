"""Bucketed deterministic CPU attention: a row's output is bitwise that of the row attended alone,
and a whole step's (step_views/attend_step) that of each group written and attended on its own.
A decode step's views (decode_views) give what attention.py's per-session calls give."""

from __future__ import annotations

import torch

from kakeya.runtime.forward.rows import RowGroup, StepLayout, cut_slab
from kakeya.runtime.cpu.attention import attend_cpu
from kakeya.runtime.cpu.plan import (BUCKET_TOKENS, attend, attend_step, decode_views, num_keys, plan_group,
                                    step_views)
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.forward.session_kv import KVShape

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 9, 3, 64, 2


def _slab(capacity: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(LAYERS, 2, KV_HEADS, capacity, HEAD_DIM, generator=g)


def _run(slab: torch.Tensor, query: torch.Tensor, row_start: int, num_rows: int, first_position: int,
         layer: int = 0) -> torch.Tensor:
    out = torch.zeros(1, query.shape[2], HEADS, HEAD_DIM)
    attend(plan_group(row_start, num_rows, first_position, torch.float32), slab, layer, query, out, 0.125)
    return out[0, row_start:row_start + num_rows]


def test_rows_of_a_chunk_equal_each_row_alone():
    g = torch.Generator().manual_seed(3)
    first, rows = 20, 90  # crosses three buckets
    query = torch.randn(1, HEADS, rows, HEAD_DIM, generator=g)
    together = _run(_slab(256, 1), query, 0, rows, first)
    for row in range(rows):
        alone = _run(_slab(256, 1), query[:, :, row:row + 1], 0, 1, first + row)
        assert torch.equal(together[row], alone[0]), row


def test_values_equal_exact_attention_over_the_visible_prefix():
    slab = _slab(128, 2)
    query = torch.randn(1, HEADS, 5, HEAD_DIM)
    first = 37
    got = _run(slab, query, 0, 5, first)
    for row in range(5):
        visible = first + row + 1
        keys, values = slab[0, 0, :, :visible], slab[0, 1, :, :visible]
        expected = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, row:row + 1], keys[None], values[None], scale=0.125, enable_gqa=True)
        torch.testing.assert_close(got[row], expected[0, :, 0], rtol=1e-5, atol=1e-6)


def test_stale_entries_past_the_history_do_not_leak_in():
    clean, dirty = _slab(128, 4), _slab(128, 4)
    first = 40
    clean[:, :, :, first + 1:] = 0
    dirty[:, :, :, first + 1:] = float("nan")  # fresh memory may hold anything
    query = torch.randn(1, HEADS, 1, HEAD_DIM)
    assert torch.equal(_run(dirty, query, 0, 1, first), _run(clean, query, 0, 1, first))


def test_a_capacity_short_of_the_bucket_pads_like_cleared_entries():
    position = 2 * BUCKET_TOKENS - 3
    roomy = _slab(num_keys(position), 5)
    short = roomy[:, :, :, :position + 1].clone()  # capacity ends right after the history
    query = torch.randn(1, HEADS, 1, HEAD_DIM)
    assert torch.equal(_run(short, query, 0, 1, position), _run(roomy, query, 0, 1, position))


def _session(pool, history: int, seed: int):
    kv = pool.allocate()
    pool.reserve(kv, history + 96)
    g = torch.Generator().manual_seed(seed)
    kv.slab[:, :, :, :history] = torch.randn(LAYERS, 2, KV_HEADS, history, HEAD_DIM, generator=g)
    kv.slab[:, :, :, history:] = float("nan")  # never written: fresh memory may hold anything
    kv.num_positions = history
    return kv


def _pool():
    shape = KVShape(LAYERS, KV_HEADS, HEAD_DIM, torch.float32, torch.device("cpu"))
    return KVPool(shape, 1 << 30, 32, 0, 0, 512)


def _step(kvs, rows, query, key, value):
    """One step through step_views/attend_step, every layer; returns [layers, T, heads, head_dim]."""
    groups, start = [], 0
    for kv, n in zip(kvs, rows):
        groups.append(RowGroup(kv, start, n, kv.num_positions))
        start += n
    plans = [plan_group(g.row_start, g.num_rows, g.first_position, torch.float32) for g in groups]
    views = step_views(groups, plans, [cut_slab(g, p) for g, p in zip(groups, plans)], start)
    assert views is not None
    outs = torch.stack([attend_step(views, layer, query, key, value, 0.125)[0] for layer in range(LAYERS)])
    for g in groups:
        g.kv.num_positions += g.num_rows
    return outs


def test_a_step_equals_each_group_written_and_attended_alone():
    pool = _pool()
    histories, rows = (40, 0, 95), (1, 70, 3)  # a decode row, a prompt across three buckets, an append
    g = torch.Generator().manual_seed(6)
    query = torch.randn(1, HEADS, sum(rows), HEAD_DIM, generator=g)
    key, value = (torch.randn(1, KV_HEADS, sum(rows), HEAD_DIM, generator=g) for _ in range(2))
    kvs = [_session(pool, h, seed) for seed, h in enumerate(histories)]
    refs = [_session(pool, h, seed) for seed, h in enumerate(histories)]
    got = _step(kvs, rows, query, key, value)
    start = 0
    for kv, ref, history, n in zip(kvs, refs, histories, rows):
        plan = plan_group(start, n, history, torch.float32)
        for layer in range(LAYERS):
            ref.slab[layer, 0, :, history:history + n] = key[0, :, start:start + n]
            ref.slab[layer, 1, :, history:history + n] = value[0, :, start:start + n]
            out = torch.zeros(1, sum(rows), HEADS, HEAD_DIM)
            attend(plan, ref.slab, layer, query, out, 0.125)
            assert torch.equal(got[layer, start:start + n], out[0, start:start + n]), (layer, history)
        assert torch.equal(kv.slab[:, :, :, :history + n], ref.slab[:, :, :, :history + n])
        start += n


def test_rows_appended_one_per_step_equal_rows_of_one_step():
    g = torch.Generator().manual_seed(7)
    rows = 45
    query = torch.randn(1, HEADS, rows, HEAD_DIM, generator=g)
    key, value = (torch.randn(1, KV_HEADS, rows, HEAD_DIM, generator=g) for _ in range(2))
    pool = _pool()
    whole = _step([_session(pool, 10, 1)], [rows], query, key, value)
    kv = _session(pool, 10, 1)
    for row in range(rows):
        one = slice(row, row + 1)
        assert torch.equal(_step([kv], [1], query[:, :, one], key[:, :, one], value[:, :, one])[:, 0],
                           whole[:, row]), row


def test_a_decode_step_through_views_equals_the_per_session_calls():
    histories = (40, 1, 95, 7)
    g = torch.Generator().manual_seed(8)
    query = torch.randn(1, HEADS, len(histories), HEAD_DIM, generator=g)
    key, value = (torch.randn(1, KV_HEADS, len(histories), HEAD_DIM, generator=g) for _ in range(2))
    pool = _pool()
    results = []
    for use_views in (True, False):
        kvs = [_session(pool, h, seed) for seed, h in enumerate(histories)]
        groups = tuple(RowGroup(kv, row, 1, kv.num_positions) for row, kv in enumerate(kvs))
        cuts = tuple(cut_slab(group, None) for group in groups)
        views = decode_views(groups, cuts, len(groups)) if use_views else None
        assert (views is not None) == use_views
        layout = StepLayout(groups, len(groups), False, cpu_cuts=cuts, cpu_views=views)
        outs = torch.stack([attend_cpu(layout, layer, query, key, value, 0.125) for layer in range(LAYERS)])
        results.append((outs, [kv.slab[:, :, :, :h + 1].clone() for kv, h in zip(kvs, histories)]))
    (got, got_kv), (want, want_kv) = results
    assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(got_kv, want_kv))
    assert not got.isnan().any()


def test_decode_views_leave_prompts_and_appends_to_the_general_path():
    pool = _pool()
    kvs = [_session(pool, 10, 0), _session(pool, 20, 1)]
    groups = (RowGroup(kvs[0], 0, 1, 10), RowGroup(kvs[1], 1, 3, 20))
    assert decode_views(groups, tuple(cut_slab(g, None) for g in groups), 4) is None
