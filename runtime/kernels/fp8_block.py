"""Blocks of rows over fp8 slabs through a CUDA kernel compiled at run time (fp8_block.cu).

A prompt chunk appended to a long conversation attends in blocks of rows (cuda/plan.py). Over fp8
slabs the Triton block kernel reads each V tile byte by byte from shared memory and widens K and V
in every warp; this kernel widens each key tile once, into fp16 in shared memory, and multiplies
from there with matrix loads. Its CTA holds 144 (row, query head) pairs, so where it serves, the
planner makes blocks of BLOCK_ROWS = 72 rows instead of 32: a service turn's 65-row append is one
block whose keys are read once, where the Triton kernel's blocks of 32, 17 and 16 read them three
times. It writes the same split partials, which the same combine kernel merges.

It serves what it was measured on: bf16 queries, head_dim 128, 1-8 query heads a KV head,
compute capability 8.9 or later, NVRTC through torch (nvrtc.py). Elsewhere `eligible` says
no and the Triton kernel serves the blocks.
"""

from __future__ import annotations

import functools

import torch

from kakeya.runtime.kernels import nvrtc as cuda_nvrtc
from kakeya.runtime.kernels.triton_blocks import _combine_block_kernel, block_splits

HEAD_DIM = 128
GROUPS = (1, 2, 4, 8)  # the kernel's entry points (fp8_block_attend_g<G>)
WARPS = 9  # as the .cu file's WARPS
PAIRS_PER_CTA = 16 * WARPS  # (row, query head) pairs a CTA serves: the M of its products
BLOCK_ROWS = 72  # rows of the planner's blocks where this kernel serves them
MAX_SPLITS = 16  # one block over 19k keys: 8 KV heads x 16 splits fill an H200's 132 SMs
# As the .cu file's SMEM_BYTES: 2 stages of fp8 K and V tiles (64 keys) and the widened fp16 tiles.
SHARED_MEM = 2 * 2 * 64 * HEAD_DIM + 2 * 64 * 2 * HEAD_DIM
STATIC_SHARED = 0  # the .cu file declares no static shared memory
# CTAs a KV head (and part of a block's rows), sharing the step's (block, split) items: as many as
# one long block's splits, so a service turn's append (one block) runs one wave of busy CTAs, and a
# step with many blocks still spreads them over 8 x 16 = 128 CTAs.
SPREAD = MAX_SPLITS


def eligible(query: torch.Tensor, meta: torch.Tensor, num_kv: int, kv_dtype: torch.dtype | None) -> bool:
    """Whether this kernel can serve these rows' blocks. The kernel reads queries two at a time
    (4 bytes), so their strides must be even, and the blocks' leading rows from meta's sixth row."""
    group = query.shape[1] // num_kv
    return (kv_dtype == torch.float8_e4m3fn and meta.shape[0] >= 6 and query.dtype == torch.bfloat16
            and query.shape[2] == HEAD_DIM and group in GROUPS and query.shape[1] == group * num_kv and query.stride(2) == 1
            and query.stride(0) % 2 == 0 and query.stride(1) % 2 == 0 and query.data_ptr() % 4 == 0
            and _kernel(query.device.index, group) is not None)


def block_rows(num_heads: int, num_kv: int, head_dim: int, dtype: torch.dtype, kv_dtype: torch.dtype,
               device_index: int | None) -> int | None:
    """BLOCK_ROWS when this kernel will serve a model of these shapes, else None (the planner keeps
    the Triton kernel's blocks). Compiles the kernel: its every later `eligible` then holds, since
    a step's queries are views of whole projections (even strides, 4-byte aligned)."""
    group = num_heads // num_kv
    if (kv_dtype != torch.float8_e4m3fn or dtype != torch.bfloat16 or head_dim != HEAD_DIM or group not in GROUPS
            or num_heads != group * num_kv):
        return None
    return BLOCK_ROWS if _kernel(device_index, group) is not None else None


def _kernel(device_index: int | None, group: int):
    if not _fits(device_index):
        return None
    return cuda_nvrtc.kernel("fp8_block.cu", f"fp8_block_attend_g{group}", device_index, SHARED_MEM)


@functools.cache
def _fits(device_index: int | None) -> bool:
    """Whether a block may hold this kernel's 64 KiB of shared memory (Ada GPUs offer 99 KiB,
    Hopper 227; older parts, which the kernel does not serve anyway, may offer less)."""
    optin = getattr(torch.cuda.get_device_properties(device_index), "shared_memory_per_block_optin", None)
    return optin is None or optin >= SHARED_MEM + STATIC_SHARED


def attend_blocks(query: torch.Tensor, out: torch.Tensor, rows: torch.Tensor, meta: torch.Tensor, layer: int,
                  scale: float, num_kv: int, rows_per_block: int) -> None:
    """As triton_blocks.attend_blocks over fp8 slabs: query/out [rows, heads, 128]; meta [6, rows],
    whose sixth row lists the rows that lead blocks (then -1), each of which attends with its
    block's rows (rows_per_block at most); rows: the rows the combine writes."""
    num_rows, num_heads = rows.shape[0], query.shape[1]
    group = num_heads // num_kv
    subs = -(-rows_per_block * group // PAIRS_PER_CTA)  # CTAs that share one block's rows
    splits = block_splits(query.shape[0], MAX_SPLITS)
    # Indexed by packed row, as the Triton kernel's: a block's CTAs write its followers' rows.
    part_acc = torch.empty(query.shape[0] * num_heads * splits, HEAD_DIM, dtype=torch.float32, device=query.device)
    part_ml = torch.empty(query.shape[0] * num_heads * splits, 2, dtype=torch.float32, device=query.device)
    _kernel(query.device.index, group)(
        grid=(num_kv * subs, SPREAD, 1), block=(32 * WARPS, 1, 1),
        shared_mem=SHARED_MEM, args=[query, query.stride(0), query.stride(1), meta, meta.stride(0), num_rows, layer,
                                     float(scale), part_acc, part_ml, num_kv, splits, subs])
    _combine_block_kernel[(num_rows, num_heads)](out, out.stride(0), out.stride(1), rows, meta, meta.stride(0),
                                                part_acc, part_ml, NUM_HEADS=num_heads, HEAD_DIM=HEAD_DIM,
                                                SPLITS=splits)
