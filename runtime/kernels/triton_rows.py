"""Triton kernels of the CUDA path: K/V stores and row attention straight on the session slabs.

A session's slab is [layers, 2, kv_heads, capacity, head_dim]; slabs differ in capacity and live
anywhere in memory, so the kernels take, per packed row, the slab's address, its capacity, the
storage index the row writes and how many keys the row sees. One launch per layer then serves
every session of a step, instead of one attention call per session.

Row attention splits a row's keys into chunks (flash-decoding) and combines them in a fixed order.
With a fixed split limit the chunking depends only on the row's own key count, so a row's result
is the same whatever else shares the launch: the deterministic mode builds on that. Fast mode
lets few rows use more splits, so one long session still keeps the whole GPU busy.

Two variants of the row kernel compute the same thing (`attend_rows`'s variant): "dot_aligned", the
runtime's, is told that slab addresses are 16-byte aligned, so its K/V loads become vector copies
that triton pipelines; "dot" lacks the hint: an address read from memory is taken as unaligned and
each element is loaded on its own, at half the bandwidth (ops/bench/attention_kernel.py measures both;
a CUDA-core kernel without tl.dot was slower still and was dropped).

Importing this module needs triton (shipped with the CUDA builds of torch); the CPU path never
imports it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DETERMINISTIC_SPLITS = 16  # at most; how many a row uses depends on its key count alone
# A lone row ran fastest in 32 splits (3 stages, cuda/attention.LONE_ROW_STAGES) over long and
# short histories alike; 64 splits were slower at both (docs/cuda.md). A graph's grid launches
# every split, used or not.
MAX_SPLITS = 32
MIN_SPLIT_KEYS = 256  # fewer keys than this per split would cost more in the combine than it saves
BLOCK_N = 64
TARGET_PROGRAMS = 512  # enough resident programs to keep an H100/H200's memory system busy


def split_limit(num_rows: int, num_kv: int, deterministic: bool) -> int:
    """Most splits a row may use. Fast mode spreads few rows over many programs (a long single
    session); deterministic mode fixes the limit so the batch never changes a row's arithmetic."""
    if deterministic:
        return DETERMINISTIC_SPLITS
    wanted = max(1, TARGET_PROGRAMS // max(1, num_rows * num_kv))
    return min(MAX_SPLITS, 1 << (wanted.bit_length() - 1))

_TL_DTYPE = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32,
             torch.float8_e4m3fn: tl.float8e4nv}

# fp8 slabs: dots run in fp16, which holds every e4m3 value exactly and widens faster than bf16
# would (docs/cuda.md). Wider key tiles halve the loop trips of the lone row.
FP8_BLOCK_N = 128


def dot_dtype(query_dtype: torch.dtype, kv_dtype: torch.dtype) -> torch.dtype:
    """The dtype the attention kernels multiply in: the queries', or fp16 over fp8 slabs."""
    return torch.float16 if kv_dtype == torch.float8_e4m3fn else query_dtype


@triton.jit
def to_dot(x, DTYPE: tl.constexpr):
    """Queries as the dots take them: into fp16 they saturate (a bf16 query beyond fp16's range
    would become inf, and its row NaN)."""
    if DTYPE == tl.float16:
        x = tl.minimum(tl.maximum(x.to(tl.float32), -65504.0), 65504.0)
    return x.to(DTYPE)


@triton.jit
def to_slab(x, KV_DTYPE: tl.constexpr):
    """A K/V vector as the slab stores it: fp8 slabs (--kv-dtype fp8) saturate at e4m3's largest
    finite value, 448 (torch's cast would turn what lies beyond into NaN); others cast."""
    if KV_DTYPE == tl.float8e4nv:
        x = tl.minimum(tl.maximum(x.to(tl.float32), -448.0), 448.0)
    return x.to(KV_DTYPE)


@triton.jit
def _store_kernel(key_ptr, value_ptr, k_stride_t, k_stride_h, v_stride_t, v_stride_h,
                  meta_ptr, meta_stride, layer,
                  NUM_KV: tl.constexpr, HEAD_DIM: tl.constexpr, DTYPE: tl.constexpr):
    r = tl.program_id(0)
    h = tl.program_id(1)
    base = tl.load(meta_ptr + r).to(tl.pointer_type(DTYPE))
    cap = tl.load(meta_ptr + meta_stride + r)
    t = tl.load(meta_ptr + 2 * meta_stride + r)
    d = tl.arange(0, HEAD_DIM)
    k = tl.load(key_ptr + r * k_stride_t + h * k_stride_h + d)
    v = tl.load(value_ptr + r * v_stride_t + h * v_stride_h + d)
    k_off = ((layer * 2 * NUM_KV + h) * cap + t) * HEAD_DIM
    v_off = (((layer * 2 + 1) * NUM_KV + h) * cap + t) * HEAD_DIM
    tl.store(base + k_off + d, to_slab(k, DTYPE))
    tl.store(base + v_off + d, to_slab(v, DTYPE))


@triton.jit
def attend_keys(q, k_base, v_base, lo, hi, n_row, scale, TILE: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr, PER_ROW: tl.constexpr):
    """One split's online softmax: the query tile q ([TILE, HEAD_DIM], as to_dot gives it) against
    keys lo..hi-1 of one KV head's K/V (k_base, v_base), BLOCK keys a trip. Returns the split's
    partial: each query's running max m, its sum of weights l and its unnormalised acc.
    PER_ROW: the tile's rows see different key counts (n_row, one a query: a block's causal mask),
    so a row may have seen no key yet; without it every row sees every key below hi, and n_row is
    not read."""
    d = tl.arange(0, HEAD_DIM)
    m = tl.full([TILE], float("-inf"), tl.float32)
    l = tl.zeros([TILE], tl.float32)
    acc = tl.zeros([TILE, HEAD_DIM], tl.float32)
    for start in range(lo, hi, BLOCK):
        t = start + tl.arange(0, BLOCK)
        inside = t < hi
        # fp8 slabs widen to the compute dtype here: half the bytes read, same dot products.
        k = tl.load(k_base + t[:, None] * HEAD_DIM + d[None, :], mask=inside[:, None], other=0.0).to(DTYPE)
        v = tl.load(v_base + t[:, None] * HEAD_DIM + d[None, :], mask=inside[:, None], other=0.0).to(DTYPE)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        if PER_ROW:
            scores = tl.where(inside[None, :] & (t[None, :] < n_row[:, None]), scores, float("-inf"))
        else:
            scores = tl.where(inside[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))
        if PER_ROW:
            # A row that has seen no key yet keeps m = -inf; shifting by 0 keeps its p and alpha at 0.
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            # Every trip holds a key below hi, which every row sees: m_new is past -inf, no guard.
            shift = m_new
        p = tl.exp(scores - shift[:, None])
        alpha = tl.exp(m - shift)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DTYPE), v, input_precision=PRECISION)
        m = m_new
    return m, l, acc


@triton.jit
def store_partials(part_acc_ptr, part_ml_ptr, part, m, l, acc, keep, HEAD_DIM: tl.constexpr):
    """A split's partials where the combine kernels read them: acc at part, (m, l) at 2 part."""
    d = tl.arange(0, HEAD_DIM)
    tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + d[None, :], acc, mask=keep[:, None])
    tl.store(part_ml_ptr + part * 2, m, mask=keep)
    tl.store(part_ml_ptr + part * 2 + 1, l, mask=keep)


@triton.jit
def _attend_kernel(q_ptr, q_stride_t, q_stride_h, rows_ptr, meta_ptr, meta_stride, layer, scale,
                   part_acc_ptr, part_ml_ptr,
                   NUM_KV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, SPLITS: tl.constexpr,
                   MIN_SPLIT: tl.constexpr, DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                   HAS_LEAD: tl.constexpr, ALIGN: tl.constexpr, KV_DTYPE: tl.constexpr):
    i = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.program_id(2)
    r = tl.load(rows_ptr + i)
    if HAS_LEAD:
        if tl.load(meta_ptr + 4 * meta_stride + r) != 1:
            return  # a row of a block: triton_blocks.py attends it
    base = tl.load(meta_ptr + r).to(tl.pointer_type(KV_DTYPE))
    if ALIGN > 1:
        base = tl.multiple_of(base, ALIGN)
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
    keep = g < GROUP
    part = (i * (NUM_KV * GROUP) + heads) * SPLITS + s
    if s >= splits:
        # A split the row does not use (the grid is sized for the graph, not for this row's keys):
        # mark it empty and skip the accumulator, which the combine then does not read.
        tl.store(part_ml_ptr + part * 2, tl.full([GROUP_PAD], float("-inf"), tl.float32), mask=keep)
        tl.store(part_ml_ptr + part * 2 + 1, tl.zeros([GROUP_PAD], tl.float32), mask=keep)
        return
    q = tl.load(q_ptr + r * q_stride_t + heads[:, None] * q_stride_h + d[None, :],
                mask=(g < GROUP)[:, None], other=0.0)
    q = to_dot(q, DTYPE)
    k_base = base + (layer * 2 * NUM_KV + h) * cap * HEAD_DIM
    v_base = base + ((layer * 2 + 1) * NUM_KV + h) * cap * HEAD_DIM
    m, l, acc = attend_keys(q, k_base, v_base, lo, hi, n, scale, GROUP_PAD, HEAD_DIM, BLOCK, DTYPE, PRECISION, False)
    # Partial results always go through the combine kernel, split count 1 included, so a row's
    # arithmetic does not depend on how many splits its neighbours needed.
    store_partials(part_acc_ptr, part_ml_ptr, part, m, l, acc, keep, HEAD_DIM)


@triton.jit
def _combine_kernel(out_ptr, o_stride_t, o_stride_h, rows_ptr, meta_ptr, meta_stride, part_acc_ptr, part_ml_ptr,
                    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr, HAS_LEAD: tl.constexpr):
    i = tl.program_id(0)
    hq = tl.program_id(1)
    r = tl.load(rows_ptr + i)
    if HAS_LEAD:
        if tl.load(meta_ptr + 4 * meta_stride + r) != 1:
            return
    d = tl.arange(0, HEAD_DIM)
    total = combine_partials(part_acc_ptr, part_ml_ptr, i * NUM_HEADS + hq, HEAD_DIM, SPLITS)
    tl.store(out_ptr + r * o_stride_t + hq * o_stride_h + d, total.to(out_ptr.dtype.element_ty))


@triton.jit
def combine_partials(part_acc_ptr, part_ml_ptr, pair, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
    """The attention output (fp32, [HEAD_DIM]) of one (row, query head) pair, whose SPLITS partials
    start at part pair * SPLITS: each split weighs exp(m - top); a split that saw no key, 0."""
    part = pair * SPLITS + tl.arange(0, SPLITS)
    m = tl.load(part_ml_ptr + part * 2)
    l = tl.load(part_ml_ptr + part * 2 + 1)
    top = tl.max(m, 0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp(m - top))
    acc = load_partials(part_acc_ptr, part, m, HEAD_DIM)
    return tl.sum(acc * w[:, None], 0) / tl.sum(l * w, 0)


@triton.jit
def load_partials(part_acc_ptr, part, m, HEAD_DIM: tl.constexpr):
    """The splits' accumulators; a split with m = -inf saw no key, so its accumulator is zero
    (it was never written: skipping it keeps the sum's bits)."""
    d = tl.arange(0, HEAD_DIM)
    return tl.load(part_acc_ptr + part[:, None] * HEAD_DIM + d[None, :], mask=(m > float("-inf"))[:, None], other=0.0)


def store_rows(key: torch.Tensor, value: torch.Tensor, meta: torch.Tensor, layer: int, dtype: torch.dtype) -> None:
    """key/value: [rows, kv_heads, head_dim] views; meta: [4, rows] int64 (address, capacity, store, keys);
    dtype: the slabs' (fp8 slabs take the values saturated to +-448)."""
    rows, num_kv, head_dim = key.shape
    _store_kernel[(rows, num_kv)](key, value, key.stride(0), key.stride(1), value.stride(0), value.stride(1),
                                  meta, meta.stride(0), layer,
                                  NUM_KV=num_kv, HEAD_DIM=head_dim, DTYPE=_TL_DTYPE[dtype])


VARIANTS = ("dot", "dot_aligned")


def attend_rows(query: torch.Tensor, out: torch.Tensor, rows: torch.Tensor, meta: torch.Tensor,
                layer: int, scale: float, num_kv: int, dtype: torch.dtype, splits: int,
                block: int = BLOCK_N, num_warps: int = 4, num_stages: int = 3, variant: str = "dot",
                blocks: bool = False, kv_dtype: torch.dtype | None = None) -> None:
    """query/out: [rows, heads, head_dim]; attends each listed row to its slab's first `keys` keys,
    in at most `splits` (a power of two) chunks. blocks: meta has a fifth row (lead) and rows whose
    lead is not 1 are left to the block kernel. block/num_warps/num_stages: launch settings
    (ops/bench/attention_kernel.py compares them; block changes the reduction order). variant:
    which kernel (see the module docstring); "dot_aligned" needs 16-byte aligned slabs, which torch
    allocations are. dtype: what the dots multiply in (dot_dtype); kv_dtype: the slabs' when it
    differs (fp8)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown row attention variant {variant!r}; expected one of {VARIANTS}")
    num_rows = rows.shape[0]
    num_heads, head_dim = query.shape[1], query.shape[2]
    group = num_heads // num_kv
    part_acc = torch.empty(num_rows * num_heads * splits, head_dim, dtype=torch.float32, device=query.device)
    part_ml = torch.empty(num_rows * num_heads * splits, 2, dtype=torch.float32, device=query.device)
    grid = (num_rows, num_kv, splits)
    common = (query, query.stride(0), query.stride(1), rows, meta, meta.stride(0), layer, scale, part_acc, part_ml)
    precision = "ieee" if dtype == torch.float32 else "tf32"
    _attend_kernel[grid](
        *common, NUM_KV=num_kv, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK=block, SPLITS=splits, MIN_SPLIT=MIN_SPLIT_KEYS, DTYPE=_TL_DTYPE[dtype], PRECISION=precision,
        HAS_LEAD=blocks, ALIGN=16 if variant == "dot_aligned" else 1, num_warps=num_warps, num_stages=num_stages,
        KV_DTYPE=_TL_DTYPE[kv_dtype or dtype],
    )
    _combine_kernel[(num_rows, num_heads)](out, out.stride(0), out.stride(1), rows, meta, meta.stride(0),
                                          part_acc, part_ml, NUM_HEADS=num_heads, HEAD_DIM=head_dim,
                                          SPLITS=splits, HAS_LEAD=blocks)
