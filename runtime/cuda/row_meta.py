"""The per-row metadata of a CUDA forward: what the kernels read about each row, as the host builds it.

Meta is six rows of int64 a packed row: slab address, capacity, storage index, visible keys
(full attention), block lead, and the rows that lead blocks (then -1). The host builds it as
lists (`row_meta`, `with_leaders`) and stages it with the ids and positions in one pinned buffer,
copied to the device at once (forward.py); the kernels read it through KernelMeta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kakeya.runtime.forward.rows import RowGroup
from kakeya.runtime.cuda.plan import BLOCK_ROWS, block_leads, kernel_eligible

# ids, positions, then meta (slab address, capacity, storage index, visible keys, block lead, leaders), kept rows
STAGED_ROWS = 9  # ids, positions, 6 rows of meta, kept rows
META = slice(2, 8)
KEEP = 8


@dataclass(frozen=True, slots=True)
class KernelMeta:
    """Per-row device metadata of one forward, read by the attention function."""

    # [6, rows] int64: slab address, capacity, storage index, visible keys, block lead; the last row
    # lists the rows that lead blocks, in order, then -1 (kernels/fp8_block.cu reads it)
    meta: torch.Tensor
    kernel_rows: torch.Tensor  # [n] int64: rows that attend through the row (or block) kernel
    sdpa_groups: tuple[RowGroup, ...]  # sessions whose rows attend through SDPA
    blocks: bool = False  # some rows attend in blocks (lead >= 2): the block kernel runs too
    kv_dtype: torch.dtype | None = None  # the slabs' dtype where it is not the model's (fp8)
    block_rows: int = BLOCK_ROWS  # most rows a block holds (CudaForward.block_rows)


def row_meta(groups: tuple[RowGroup, ...], num_rows: int, blocks: bool, block_rows: int) -> list[list[int]]:
    """[5][rows]: slab address, capacity, storage index, visible keys (full attention), block lead
    (with blocks, a group's rows attend in blocks of block_rows: the first row holds the
    block's size, the others 0; else every row holds 1). with_leaders adds the sixth row."""
    meta = [[0] * num_rows for _ in range(4)] + [[1] * num_rows]
    for g in groups:
        kv = g.kv
        address, capacity = kv.slab.data_ptr(), kv.capacity
        for i in range(g.num_rows):
            r = g.row_start + i
            index = kv.storage_index(g.first_position + i)
            meta[0][r], meta[1][r], meta[2][r], meta[3][r] = address, capacity, index, index + 1
        if blocks and g.num_rows > 1:
            meta[4][g.row_start:g.row_start + g.num_rows] = block_leads(
                g.num_rows, kernel_eligible(g, block_rows), block_rows)
    return meta


def with_leaders(meta: list[list[int]], kernel_rows: set[int] | None = None) -> list[list[int]]:
    """A forward's 5 rows of meta and a sixth: the rows that lead its blocks, in order, then -1.
    kernel_rows: the rows that attend through the kernels (None: all, as in a graph forward)."""
    leaders = [r for r, lead in enumerate(meta[4]) if lead > 1 and (kernel_rows is None or r in kernel_rows)]
    return meta + [leaders + [-1] * (len(meta[4]) - len(leaders))]
