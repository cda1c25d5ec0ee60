"""Block attention on the session slabs: consecutive rows of one session share every key they load.

A prompt chunk appended to a long conversation has many rows that all see (almost) the same keys.
Through the row kernel each row reads the whole history again: a 64-token append over 19k keys
read 64 x 2.2 GB on a Qwen3-0.6B shape. Here one program serves a block of up to ROWS consecutive
rows of one session: it loads each key tile once and multiplies it with every row's queries, and
each row masks the keys past its own position (causal).

Blocks are marked in the step's row metadata (meta row 4, "lead"): the first row of a block holds
the block's row count, the rest 0; a row attending alone (decode) holds 1 and is served by the row
kernel, which skips the others. Only fast mode makes blocks: a block's split size follows its
last row's key count, so a row's arithmetic depends on its neighbours.

Needs triton (the CUDA path only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kakeya.runtime.kernels.triton_rows import (_TL_DTYPE, MIN_SPLIT_KEYS, attend_keys, combine_partials,
                                                store_partials, to_dot)

# A service turn's 65-row append (blocks of 32) ran fastest with 8 splits and 3 stages, over long
# and short histories alike (docs/cuda.md). Fewer splits also waste fewer programs early in a
# conversation, where a block sees a few hundred keys and uses one split.
MAX_BLOCK_SPLITS = 8
BLOCK_KEYS = 64
FP8_BLOCK_KEYS = 128  # fp8 slabs: wider key tiles amortise the per-tile widening (docs/cuda.md)
BLOCK_STAGES = 3
# fp8 slabs' 128-key tiles: two stages, which let two programs share an SM. A service turn appends
# 65 rows (its chunk and the last generated token): three blocks, more programs than SMs, so the
# append runs faster with two stages than with three; a 64-row append (two blocks, one program an
# SM) neither gains nor loses (docs/cuda.md).
FP8_BLOCK_STAGES = 2


def block_splits(num_rows: int, most: int = MAX_BLOCK_SPLITS) -> int:
    """Splits per block: many when a step has few rows (one long append should still fill the
    GPU), few when it has many; at most `most` (the kernel's), so the partial buffers stay small."""
    wanted = max(1, 2048 // max(1, num_rows))
    return min(most, 1 << (wanted.bit_length() - 1))


@triton.jit
def _attend_block_kernel(q_ptr, q_stride_t, q_stride_h, rows_ptr, meta_ptr, meta_stride, layer, scale,
                         part_acc_ptr, part_ml_ptr,
                         NUM_KV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, ROWS: tl.constexpr,
                         HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, SPLITS: tl.constexpr,
                         MIN_SPLIT: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                         KV_DTYPE: tl.constexpr):
    r = tl.load(rows_ptr + tl.program_id(0))
    h = tl.program_id(1)
    s = tl.program_id(2)
    count = tl.load(meta_ptr + 4 * meta_stride + r)
    if count < 2:
        return  # a follower (its leader's program serves it) or a row the row kernel serves
    # Slabs are whole torch allocations (16-byte aligned); without the hint, an address read from
    # memory is taken as unaligned and K/V load one element at a time.
    base = tl.multiple_of(tl.load(meta_ptr + r).to(tl.pointer_type(KV_DTYPE)), 16)
    cap = tl.load(meta_ptr + meta_stride + r)
    n_last = tl.load(meta_ptr + 3 * meta_stride + r + count - 1)  # the block's last row sees the most keys
    splits = tl.minimum(SPLITS, tl.cdiv(n_last, MIN_SPLIT))
    per = tl.cdiv(tl.cdiv(n_last, splits), BLOCK) * BLOCK
    lo = s * per
    hi = tl.minimum(n_last, lo + per)

    # Query tile: ROWS rows x GROUP_PAD heads, flattened; row j of the block is packed row r + j.
    m_idx = tl.arange(0, ROWS * GROUP_PAD)
    j = m_idx // GROUP_PAD
    g = m_idx % GROUP_PAD
    valid = (j < count) & (g < GROUP)
    row = r + j
    heads = h * GROUP + g
    part = (row * (NUM_KV * GROUP) + heads) * SPLITS + s
    if s >= splits:
        # An unused split of this graph's grid: marked empty, its accumulator neither written nor read.
        tl.store(part_ml_ptr + part * 2, tl.full([ROWS * GROUP_PAD], float("-inf"), tl.float32), mask=valid)
        tl.store(part_ml_ptr + part * 2 + 1, tl.zeros([ROWS * GROUP_PAD], tl.float32), mask=valid)
        return
    n_row = tl.load(meta_ptr + 3 * meta_stride + row, mask=valid, other=0)
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + row[:, None] * q_stride_t + heads[:, None] * q_stride_h + d[None, :],
                mask=valid[:, None], other=0.0)
    q = to_dot(q, DTYPE)
    k_base = base + (layer * 2 * NUM_KV + h) * cap * HEAD_DIM
    v_base = base + ((layer * 2 + 1) * NUM_KV + h) * cap * HEAD_DIM
    m, l, acc = attend_keys(q, k_base, v_base, lo, hi, n_row, scale, ROWS * GROUP_PAD, HEAD_DIM, BLOCK, DTYPE,
                            PRECISION, True)
    store_partials(part_acc_ptr, part_ml_ptr, part, m, l, acc, valid, HEAD_DIM)


@triton.jit
def _combine_block_kernel(out_ptr, o_stride_t, o_stride_h, rows_ptr, meta_ptr, meta_stride, part_acc_ptr,
                          part_ml_ptr, NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
    r = tl.load(rows_ptr + tl.program_id(0))
    hq = tl.program_id(1)
    if tl.load(meta_ptr + 4 * meta_stride + r) == 1:
        return  # the row kernel's row
    d = tl.arange(0, HEAD_DIM)
    total = combine_partials(part_acc_ptr, part_ml_ptr, r * NUM_HEADS + hq, HEAD_DIM, SPLITS)
    tl.store(out_ptr + r * o_stride_t + hq * o_stride_h + d, total.to(out_ptr.dtype.element_ty))


def attend_blocks(query: torch.Tensor, out: torch.Tensor, rows: torch.Tensor, meta: torch.Tensor, layer: int,
                  scale: float, num_kv: int, dtype: torch.dtype, rows_per_block: int,
                  kv_dtype: torch.dtype | None = None) -> None:
    """query/out: [rows, heads, head_dim]; meta: [5, rows] (address, capacity, store, keys, lead);
    dtype: what the dots multiply in (triton_rows.dot_dtype); kv_dtype: the slabs' when it differs (fp8).
    Every listed row that leads a block (lead >= 2) attends with its block's rows; rows with
    lead 1 are left to the row kernel."""
    num_rows, (num_heads, head_dim) = rows.shape[0], query.shape[1:]
    group = num_heads // num_kv
    group_pad = triton.next_power_of_2(group)
    splits = block_splits(query.shape[0])
    # Indexed by packed row (not by position in `rows`): a block's programs write its followers' rows.
    part_acc = torch.empty(query.shape[0] * num_heads * splits, head_dim, dtype=torch.float32, device=query.device)
    part_ml = torch.empty(query.shape[0] * num_heads * splits, 2, dtype=torch.float32, device=query.device)
    precision = "ieee" if dtype == torch.float32 else "tf32"
    _attend_block_kernel[(num_rows, num_kv, splits)](
        query, query.stride(0), query.stride(1), rows, meta, meta.stride(0), layer, scale, part_acc, part_ml,
        NUM_KV=num_kv, GROUP=group, GROUP_PAD=group_pad, ROWS=rows_per_block, HEAD_DIM=head_dim,
        BLOCK=FP8_BLOCK_KEYS if kv_dtype == torch.float8_e4m3fn else BLOCK_KEYS, SPLITS=splits, MIN_SPLIT=MIN_SPLIT_KEYS, DTYPE=_TL_DTYPE[dtype], PRECISION=precision,
        KV_DTYPE=_TL_DTYPE[kv_dtype or dtype], num_warps=4,
        num_stages=FP8_BLOCK_STAGES if kv_dtype == torch.float8_e4m3fn else BLOCK_STAGES,
    )
    _combine_block_kernel[(num_rows, num_heads)](out, out.stride(0), out.stride(1), rows, meta, meta.stride(0),
                                                part_acc, part_ml, NUM_HEADS=num_heads, HEAD_DIM=head_dim,
                                                SPLITS=splits)
