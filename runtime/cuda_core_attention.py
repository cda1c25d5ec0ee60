"""Row attention on CUDA cores: the "cc" variant of the row kernel (see cuda_kernels.attend_rows).

Decode attention reads every key and value once and does a few multiply-adds per byte, so it is
bound by memory bandwidth, not arithmetic. For small query groups (a few query heads per KV head)
tensor cores buy nothing: tl.dot needs 16 query rows, so a group of 2 is padded eightfold, and
the K/V tiles it stages in shared memory limit how many programs share an SM. This kernel keeps
K/V in registers instead: each thread loads 16-byte vectors, scores and weighted sums are
multiply-adds and warp shuffles, and shared memory is only used outside the key loop, so many
programs fit per SM and keep many loads in flight.

The key block is laid out as [REPEAT, WARPS, LANES] keys by HEAD_DIM: keys of one warp stay in
that warp, and each warp keeps its own running softmax (max, sum, accumulator) over the keys it
sees. No step of the key loop then needs a barrier between warps; the warps' states are merged
once at the end. The reduction order depends on the block shape and on the row's split, which
depends on the row's key count alone, so the deterministic mode's promise holds as for tl.dot.

Each thread holds a query row and an accumulator row per head of the group, so registers grow with
the group: meant for groups of 1 to 4 (Qwen3-0.6B has 2); larger groups suit the tensor-core kernel.

Like the rest of the row kernels it needs triton; the CPU path never imports it.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_cc_kernel(q_ptr, q_stride_t, q_stride_h, rows_ptr, meta_ptr, meta_stride, layer, scale,
                     part_acc_ptr, part_ml_ptr,
                     NUM_KV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                     HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, SPLITS: tl.constexpr,
                     MIN_SPLIT: tl.constexpr, DTYPE: tl.constexpr, WARPS: tl.constexpr, LANES: tl.constexpr,
                     HAS_LEAD: tl.constexpr):
    """Same grid, inputs and partial outputs as cuda_kernels._attend_kernel. WARPS must equal the
    launch's num_warps, and LANES the keys one warp covers at once (lanes_per_key): then triton's
    default layout gives each warp keys of its own. Other values stay correct, only slower. BLOCK:
    a power of two, at least WARPS * LANES."""
    REPEAT: tl.constexpr = BLOCK // (WARPS * LANES)
    i = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.program_id(2)
    r = tl.load(rows_ptr + i)
    if HAS_LEAD:
        if tl.load(meta_ptr + 4 * meta_stride + r) != 1:
            return  # a row of a block: cuda_block_kernel.py attends it
    # Slabs are whole torch allocations, so 16-byte aligned: the hint turns the K/V loads into
    # 16-byte vector loads (an address read from memory is otherwise assumed unaligned).
    base = tl.multiple_of(tl.load(meta_ptr + r).to(tl.pointer_type(DTYPE)), 16)
    cap = tl.load(meta_ptr + meta_stride + r)
    n = tl.load(meta_ptr + 3 * meta_stride + r)
    # The split size is a function of n alone: the batch never changes a row's reduction order.
    splits = tl.minimum(SPLITS, tl.cdiv(n, MIN_SPLIT))
    per = tl.cdiv(tl.cdiv(n, splits), BLOCK) * BLOCK
    lo = s * per
    hi = tl.minimum(n, lo + per)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    heads = h * GROUP + g
    q = tl.load(q_ptr + r * q_stride_t + heads[:, None] * q_stride_h + d[None, :],
                mask=(g < GROUP)[:, None], other=0.0).to(tl.float32) * scale
    q = q[:, None, None, None, :]  # [group, 1, 1, 1, head_dim] against [1, REPEAT, WARPS, LANES, head_dim]
    c = tl.arange(0, REPEAT)[:, None, None]
    w = tl.arange(0, WARPS)[None, :, None]
    lane = tl.arange(0, LANES)[None, None, :]
    key = ((c * WARPS + w) * LANES + lane)[None]
    dim = d[None, None, None, None, :]
    k_base = base + (layer * 2 * NUM_KV + h) * cap * HEAD_DIM
    v_base = base + ((layer * 2 + 1) * NUM_KV + h) * cap * HEAD_DIM
    m = tl.full([GROUP_PAD, WARPS], float("-inf"), tl.float32)
    l = tl.zeros([GROUP_PAD, WARPS], tl.float32)
    acc = tl.zeros([GROUP_PAD, WARPS, HEAD_DIM], tl.float32)
    for start in range(lo, hi, BLOCK):
        t = start + key
        inside = t < hi
        offsets = t[:, :, :, :, None] * HEAD_DIM + dim
        k = tl.load(k_base + offsets, mask=inside[:, :, :, :, None], other=0.0).to(tl.float32)
        v = tl.load(v_base + offsets, mask=inside[:, :, :, :, None], other=0.0).to(tl.float32)
        scores = tl.where(inside, tl.sum(q * k, 4), float("-inf"))
        # In-thread axis (REPEAT) first, then the lanes: fewer shuffles than the other order.
        m_new = tl.maximum(m, tl.max(tl.max(scores, 1), 2))
        # A warp whose keys are all past the end keeps m = -inf; exponents are then taken from 0
        # so that nothing becomes NaN (its p and alpha are 0 either way).
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(scores - m_ref[:, None, :, None])
        alpha = tl.exp(m - m_ref)
        l = l * alpha + tl.sum(tl.sum(p, 1), 2)
        acc = acc * alpha[:, :, None] + tl.sum(tl.sum(p[:, :, :, :, None] * v, 1), 2)
        m = m_new
    # Merge the warps' running softmaxes: the only step that crosses warps.
    top = tl.max(m, 1)
    weight = tl.exp(m - tl.where(top == float("-inf"), 0.0, top)[:, None])  # an empty split: all 0
    l = tl.sum(l * weight, 1)
    acc = tl.sum(acc * weight[:, :, None], 1)
    part = (i * (NUM_KV * GROUP) + heads) * SPLITS + s
    keep = g < GROUP
    tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + d[None, :], acc, mask=keep[:, None])
    tl.store(part_ml_ptr + part * 2, top, mask=keep)
    tl.store(part_ml_ptr + part * 2 + 1, l, mask=keep)


def lanes_per_key(head_dim: int, itemsize: int) -> int:
    """Lanes of a 32-lane warp left over once one key row is spread in 16-byte vectors."""
    return max(1, 32 // max(1, head_dim * itemsize // 16))
