"""Blocks of rows over fp8 slabs through a CUDA kernel compiled at run time (cuda_block_fp8.cu).

A prompt chunk appended to a long conversation attends in blocks of up to BLOCK_ROWS rows
(cuda_block_kernel.py). Over fp8 slabs the Triton block kernel reads each V tile byte by byte
from shared memory and widens K and V in every warp; this kernel widens each key tile once, into
fp16 in shared memory, and multiplies from there with matrix loads. It computes the same split
partials as the Triton kernel, over the same splits, and the same combine kernel merges them.

It serves what it was measured on: bf16 queries, head_dim 128, 1-8 query heads a KV head,
compute capability 8.9 or later, NVRTC through torch (cuda_nvrtc.py). Elsewhere `eligible` says
no and the Triton kernel serves the blocks.
"""

from __future__ import annotations

import functools

import torch

from . import cuda_nvrtc
from .cuda_block_kernel import _combine_block_kernel, block_splits

HEAD_DIM = 128
GROUPS = (1, 2, 4, 8)  # the kernel's entry points (fp8_block_attend_g<G>)
WARPS = 4
PAIRS_PER_CTA = 16 * WARPS  # (row, query head) pairs a CTA serves: the M of its products
# As the .cu file's SMEM_BYTES: 4 stages of fp8 K and V tiles (64 keys) and the widened fp16 tiles.
SHARED_MEM = 4 * 2 * 64 * HEAD_DIM + 2 * 64 * 2 * HEAD_DIM
STATIC_SHARED = 8320  # the .cu file's leaders list and per-warp counts, as ptxas lays them out for sm_90
MAX_ROWS = 4096  # rows a launch may list (the .cu file's SCAN_ROWS); more go to the Triton kernel
# CTAs a (KV head, split) over the step's blocks, each serving every SLOTS-th block: a service
# turn's append makes three blocks; a step with more serves them in turn.
SLOTS = 4


def eligible(query: torch.Tensor, rows: torch.Tensor, num_kv: int, kv_dtype: torch.dtype | None) -> bool:
    """Whether this kernel can serve these rows' blocks. The kernel reads queries two at a time
    (4 bytes), so their strides must be even."""
    group = query.shape[1] // num_kv
    return (kv_dtype == torch.float8_e4m3fn and rows.shape[0] <= MAX_ROWS and query.dtype == torch.bfloat16 and query.shape[2] == HEAD_DIM
            and group in GROUPS and query.shape[1] == group * num_kv and query.stride(2) == 1
            and query.stride(0) % 2 == 0 and query.stride(1) % 2 == 0 and query.data_ptr() % 4 == 0
            and _kernel(query.device.index, group) is not None)


def _kernel(device_index: int | None, group: int):
    if not _fits(device_index):
        return None
    return cuda_nvrtc.kernel("cuda_block_fp8.cu", f"fp8_block_attend_g{group}", device_index, SHARED_MEM)


@functools.cache
def _fits(device_index: int | None) -> bool:
    """Whether a block may hold this kernel's shared memory: Ada GPUs (compute capability 8.9)
    offer 99 KiB, too little; Hopper 227."""
    optin = getattr(torch.cuda.get_device_properties(device_index), "shared_memory_per_block_optin", None)
    return optin is None or optin >= SHARED_MEM + STATIC_SHARED


def attend_blocks(query: torch.Tensor, out: torch.Tensor, rows: torch.Tensor, meta: torch.Tensor, layer: int,
                  scale: float, num_kv: int, rows_per_block: int) -> None:
    """As cuda_block_kernel.attend_blocks over fp8 slabs: query/out [rows, heads, 128], meta [5, rows];
    every listed row that leads a block (lead >= 2) attends with its block's rows."""
    num_rows, num_heads = rows.shape[0], query.shape[1]
    group = num_heads // num_kv
    subs = -(-rows_per_block * group // PAIRS_PER_CTA)  # CTAs that share one block's rows
    splits = block_splits(query.shape[0])
    # Indexed by packed row, as the Triton kernel's: a block's CTAs write its followers' rows.
    part_acc = torch.empty(query.shape[0] * num_heads * splits, HEAD_DIM, dtype=torch.float32, device=query.device)
    part_ml = torch.empty(query.shape[0] * num_heads * splits, 2, dtype=torch.float32, device=query.device)
    _kernel(query.device.index, group)(
        grid=(num_kv * subs, splits, min(SLOTS, max(1, num_rows // 2))), block=(32 * WARPS, 1, 1),
        shared_mem=SHARED_MEM, args=[query, query.stride(0), query.stride(1), rows, meta, meta.stride(0), num_rows,
                                     layer, float(scale), part_acc, part_ml, num_kv, splits, subs])
    _combine_block_kernel[(num_rows, num_heads)](out, out.stride(0), out.stride(1), rows, meta, meta.stride(0),
                                                part_acc, part_ml, NUM_HEADS=num_heads, HEAD_DIM=HEAD_DIM,
                                                SPLITS=splits)
