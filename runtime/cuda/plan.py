"""Which kernel each row of a CUDA step attends through, and how a step is cut into graph forwards.

Pure planning over row groups: no device work, so it runs (and is tested) without a GPU.
"""

from __future__ import annotations

from kakeya.runtime.forward.rows import RowGroup

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
# A session's rows attend through the row kernel when they are few (decode, draft verification)
# or see few keys (a prompt chunk early in a conversation); a long chunk over a long history goes
# to SDPA, which reads the shared keys once instead of once per row.
SMALL_GROUP_ROWS = 8
ROW_KERNEL_WORK = 256 * 1024  # key reads: blocks x visible keys
# Fast mode: a chunk's rows attend in blocks of this many rows, each block reading its keys once
# (kernels/triton_blocks.py). A 65-row append over 19k keys took 105 us a layer in blocks of 16 rows,
# 74 in blocks of 32 and 96 in blocks of 64 (H200, Qwen3-0.6B heads).
# The fp8 slabs' CUDA block kernel (kernels/fp8_block.py) takes larger blocks (its BLOCK_ROWS): every
# function here takes the block size of the kernel that serves the step.
BLOCK_ROWS = 32


def kernel_eligible(group: RowGroup, block_rows: int = BLOCK_ROWS) -> bool:
    rows = group.num_rows
    return rows <= SMALL_GROUP_ROWS or -(-rows // block_rows) * (group.first_position + rows) <= ROW_KERNEL_WORK


def block_leads(num_rows: int, one_forward: bool, block_rows: int = BLOCK_ROWS) -> list[int]:
    """Each row's lead when a group attends in blocks: the block's size on its first row, 0 on the
    others. A lone last row (lead 1) would go to the row kernel, whose splits are sized for a block
    step and so few that its one row over a long history cost more than the whole append (20 ms
    against 6 at 19k keys); when the group runs in one forward its last two blocks share the rows
    instead (32 + 1 -> 17 + 16). Sliced groups keep whole blocks: slices start on block boundaries."""
    b = block_rows
    sizes = [b] * (num_rows // b) + ([num_rows % b] if num_rows % b else [])
    if one_forward and len(sizes) > 1 and sizes[-1] == 1:
        sizes[-2:] = [b // 2 + 1, b // 2]
    return [lead for size in sizes for lead in (size, *[0] * (size - 1))]


def graph_plan(groups: tuple[RowGroup, ...], block_rows: int = BLOCK_ROWS) -> list[list[int]]:
    """Packed rows of the forwards that run a step on the row kernel, in order.

    Usually one forward holding every row. A long chunk over a long history is cut into slices
    small enough for the row kernel, one slice per forward, so a step never leaves the graphs:
    rows of a later slice read the keys the earlier forwards stored.
    """
    rounds: list[list[int]] = []
    for g in groups:
        start = 0
        for k, size in enumerate(_slice_sizes(g, block_rows)):
            if k == len(rounds):
                rounds.append([])
            rounds[k].extend(range(g.row_start + start, g.row_start + start + size))
            start += size
    return rounds


def _slice_sizes(group: RowGroup, block_rows: int) -> list[int]:
    if kernel_eligible(group, block_rows):
        return [group.num_rows]
    sizes, done = [], 0
    while done < group.num_rows:
        keys = group.first_position + done
        size = block_rows  # slices start on block boundaries, so no block straddles two forwards
        while -(-size * 2 // block_rows) * (keys + size * 2) <= ROW_KERNEL_WORK:
            size *= 2
        size = min(size, group.num_rows - done)
        sizes.append(size)
        done += size
    return sizes
