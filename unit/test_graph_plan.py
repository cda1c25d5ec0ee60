"""How the CUDA path cuts a step into graph replays: pure planning, so it runs everywhere."""

from __future__ import annotations

from kakeya.runtime.forward.rows import RowGroup
from kakeya.runtime.cuda.plan import BLOCK_ROWS, ROW_KERNEL_WORK, SMALL_GROUP_ROWS, block_leads, graph_plan


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


def blocks_of(leads: list[int], block_rows: int = BLOCK_ROWS) -> list[int]:
    """Block sizes read back from leads; checks every block's other rows hold 0."""
    sizes, i = [], 0
    while i < len(leads):
        assert 1 <= leads[i] <= block_rows and leads[i + 1:i + leads[i]] == [0] * (leads[i] - 1)
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


def test_the_fp8_block_kernels_blocks_hold_a_service_turns_append():
    """Where the fp8 CUDA block kernel serves (cuda_block_fp8.BLOCK_ROWS = 72), a turn's 64 appended
    tokens and the last generated one are one block, and the planner's rules hold at that size."""
    b = 72
    assert blocks_of(block_leads(65, True, b), b) == [65]
    assert blocks_of(block_leads(2 * b + 1, True, b), b) == [b, b // 2 + 1, b // 2]
    assert blocks_of(block_leads(2 * b + 1, False, b), b) == [b, b, 1]
    group = RowGroup(Slab(), 0, 300, 30000)
    plan = graph_plan((group,), b)
    assert sorted(r for rows in plan for r in rows) == list(range(300))
    assert all(len(rows) % b == 0 for rows in plan[:-1])  # slices start on block boundaries
    for rows in plan:
        assert -(-len(rows) // b) * (30000 + rows[-1] + 1) <= ROW_KERNEL_WORK or len(rows) == b


def test_a_forwards_leaders_row_lists_the_rows_that_lead_blocks():
    from kakeya.runtime.cuda.row_meta import with_leaders

    leads = [1, 3, 0, 0, 2, 0, 1]
    meta = [[0] * 7 for _ in range(4)] + [leads]
    assert with_leaders(meta)[5] == [1, 4, -1, -1, -1, -1, -1]
    assert with_leaders(meta)[:5] == meta
    # An eager step leaves out the blocks of a group that attends through SDPA (rows 4 and 5 here).
    assert with_leaders(meta, {0, 1, 2, 3, 6})[5] == [1, -1, -1, -1, -1, -1, -1]
