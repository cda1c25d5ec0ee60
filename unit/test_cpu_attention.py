"""Bucketed deterministic CPU attention: a row's output is bitwise that of the row attended alone."""

from __future__ import annotations

import torch

from kakeya.runtime.cpu_attention import BUCKET_TOKENS, attend, num_keys, plan_group

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
