"""How the CUDA path cuts a step into graph replays: pure planning, so it runs everywhere."""

from __future__ import annotations

from kakeya.runtime.attention import RowGroup
from kakeya.runtime.cuda_plan import BLOCK_ROWS, ROW_KERNEL_WORK, SMALL_GROUP_ROWS, block_leads, graph_plan


class Slab:  # graph_plan reads rows and positions only
    pass


def test_one_forward_when_every_session_fits_the_row_kernel():
    groups = (RowGroup(Slab(), 0, 1, 4000), RowGroup(Slab(), 1, 8, 30000), RowGroup(Slab(), 9, 256, 0))
    assert graph_plan(groups) == [list(range(265))]


def test_long_chunk_over_long_history_is_sliced_in_order():
    plan = graph_plan((RowGroup(Slab(), 0, 1, 10), RowGroup(Slab(), 1, 300, 30000), RowGroup(Slab(), 301, 4, 20)))
    assert len(plan) > 1
    assert plan[0][:1] == [0] and plan[0][-4:] == [301, 302, 303, 304]
    assert sorted(r for rows in plan for r in rows) == list(range(305))
    seen = 0
    for rows in plan:
        mine = [r for r in rows if 1 <= r <= 300]
        assert mine == list(range(1 + seen, 1 + seen + len(mine)))  # slices in order, no gaps
        blocks = -(-len(mine) // BLOCK_ROWS)  # each block of rows reads its keys once
        assert len(mine) <= SMALL_GROUP_ROWS or blocks * (30000 + seen + len(mine)) <= ROW_KERNEL_WORK
        assert seen % BLOCK_ROWS == 0  # a slice starts on a block boundary
        seen += len(mine)


def blocks_of(leads: list[int]) -> list[int]:
    """Block sizes read back from leads; checks every block's other rows hold 0."""
    sizes, i = [], 0
    while i < len(leads):
        assert 1 <= leads[i] <= BLOCK_ROWS and leads[i + 1:i + leads[i]] == [0] * (leads[i] - 1)
        sizes.append(leads[i])
        i += leads[i]
    return sizes


def test_block_leads_leave_no_lone_row_to_the_row_kernel():
    b = BLOCK_ROWS
    assert blocks_of(block_leads(2 * b, True)) == [b, b]
    assert blocks_of(block_leads(2 * b + 5, True)) == [b, b, 5]
    # The last generated token plus an append of whole blocks: none of its rows left alone.
    assert blocks_of(block_leads(2 * b + 1, True)) == [b, b // 2 + 1, b // 2]
    assert blocks_of(block_leads(b + 1, True)) == [b // 2 + 1, b // 2]
    # A sliced group keeps whole blocks, so no block straddles two forwards.
    assert blocks_of(block_leads(2 * b + 1, False)) == [b, b, 1]
