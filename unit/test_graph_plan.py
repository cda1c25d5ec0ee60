"""How the CUDA path cuts a step into graph replays: pure planning, so it runs everywhere."""

from __future__ import annotations

from kakeya.runtime.attention import RowGroup
from kakeya.runtime.cuda_forward import BLOCK_ROWS, ROW_KERNEL_WORK, SMALL_GROUP_ROWS, graph_plan


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
