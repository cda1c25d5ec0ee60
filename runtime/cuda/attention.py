"""Attention of one layer of a CUDA step: every row's K/V stored by one kernel, then rows attend
through the row kernel or, for long prefill chunks, through SDPA over the session's slab.

Both the transformers attention hook (engine/attention_hook.py) and the fused decoder (decoder.py) call
`attend` with row-major views: query [rows, heads, head_dim], key/value [rows, kv_heads, head_dim].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from kakeya.runtime.kernels import fp8_block as cuda_block_fp8
from kakeya.runtime.kernels import fp8_row as cuda_row_fp8
from kakeya.runtime.forward.rows import RowGroup, StepLayout
from kakeya.runtime.cuda.plan import BLOCK_ROWS
from kakeya.runtime.kernels.triton_rows import BLOCK_N, FP8_BLOCK_N, attend_rows, dot_dtype, split_limit, store_rows

# Which row kernel decode rows attend through (triton_rows.VARIANTS); read when graphs are captured.
# On an H200 the aligned one read K/V at 3.0-4.5 TB/s, the other at 1.1-2.3 (ops/bench/attention_kernel.py).
ROW_VARIANT = "dot_aligned"
ROW_STAGES = 2  # the aligned kernel's best or near-best stage count with several rows
# A lone row (one session decoding, fast mode) runs 32 programs a KV head: a deeper pipeline hides
# more of each program's load latency (1 row: 10.4 against 12.2 us at 4k keys; 8 rows: 42 against 38).
LONE_ROW_STAGES = 3


def attend(layout: StepLayout, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           scaling: float) -> torch.Tensor:
    """Returns [rows, heads, head_dim] (contiguous) attention outputs of every row."""
    rows = layout.cuda
    kv_dtype = rows.kv_dtype or key.dtype
    store_rows(key, value, rows.meta, layer, kv_dtype)
    out = query.new_empty(query.shape)
    if rows.kernel_rows.numel():
        q = query if query.stride(-1) == 1 else query.contiguous()
        num_rows = rows.kernel_rows.shape[0]
        if rows.blocks:
            # Rows in blocks leave the row kernel at once. Sizing its splits by every row would give
            # the few it keeps (a chunk's last row, decode rows beside an append) one split each:
            # a 65-row append over 19k keys took 20 ms instead of 6. Count each block as one row.
            num_rows = -(-num_rows // rows.block_rows)
        splits = split_limit(num_rows, key.shape[1], layout.deterministic)
        dot = dot_dtype(key.dtype, kv_dtype)
        lone = num_rows == 1 and not layout.deterministic
        if lone and cuda_row_fp8.eligible(q, key.shape[1], kv_dtype):
            cuda_row_fp8.attend_lone(q, out, rows.kernel_rows, rows.meta, layer, float(scaling), key.shape[1],
                                     rows.blocks)
        else:
            # Only the lone row's key tile was measured wider over fp8 slabs; the rest keep BLOCK_N.
            block = FP8_BLOCK_N if lone and kv_dtype == torch.float8_e4m3fn else BLOCK_N
            attend_rows(q, out, rows.kernel_rows, rows.meta, layer, float(scaling), key.shape[1], dot, splits,
                        block=block, num_stages=LONE_ROW_STAGES if lone else ROW_STAGES, variant=ROW_VARIANT,
                        blocks=rows.blocks, kv_dtype=kv_dtype)
        if rows.blocks:
            _attend_blocks(q, out, rows.kernel_rows, rows.meta, layer, float(scaling), key.shape[1], dot, kv_dtype,
                           rows.block_rows)
    for group in rows.sdpa_groups:
        _attend_causal(group, layer, query, out, scaling)
    return out


def _attend_blocks(q, out, rows, meta, layer: int, scaling: float, num_kv: int, dot, kv_dtype,
                   block_rows: int) -> None:
    """Rows that lead blocks (fast mode's appended chunks): over fp8 slabs through the CUDA kernel
    where it can run, else through the Triton block kernel, which takes blocks of BLOCK_ROWS at most."""
    if cuda_block_fp8.eligible(q, meta, num_kv, kv_dtype):
        cuda_block_fp8.attend_blocks(q, out, rows, meta, layer, scaling, num_kv, block_rows)
        return
    if block_rows > BLOCK_ROWS:
        # The planner sized the blocks for the CUDA kernel after compiling it; only queries it cannot
        # read (odd strides) end here, and the model's projections never make those.
        raise RuntimeError(f"blocks of {block_rows} rows planned for the fp8 CUDA block kernel, which cannot "
                           f"serve these queries (shape {tuple(q.shape)}, strides {q.stride()}, {rows.shape[0]} rows)")
    from kakeya.runtime.kernels.triton_blocks import attend_blocks

    attend_blocks(q, out, rows, meta, layer, scaling, num_kv, dot, BLOCK_ROWS, kv_dtype)


def _attend_causal(group: RowGroup, layer: int, query, out, scaling) -> None:
    """A long chunk of one full-attention session: bottom-right causal SDPA, which the flash
    kernels take (a boolean mask, with grouped heads, falls back to the math kernel). Reads the
    slab after the store, so an fp8 slab's chunk sees the same rounded keys a decode row would."""
    end = group.first_position + group.num_rows
    rows = slice(group.row_start, group.row_start + group.num_rows)
    repeat = query.shape[1] // group.kv.shape.num_kv_heads
    keys = group.kv.slab[layer, 0, :, :end].to(query.dtype).repeat_interleave(repeat, 0)
    values = group.kv.slab[layer, 1, :, :end].to(query.dtype).repeat_interleave(repeat, 0)
    attended = F.scaled_dot_product_attention(query[rows].transpose(0, 1)[None], keys[None], values[None],
                                              attn_mask=causal_lower_right(group.num_rows, end), scale=scaling)
    out[rows] = attended[0].transpose(0, 1)
