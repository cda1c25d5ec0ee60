"""A lone decoding row over fp8 slabs through a CUDA kernel compiled at run time (fp8_row.cu).

The Triton row kernel reads the V tile of its PV product one byte at a time from shared memory
(README, long session); this kernel regroups V's bytes in registers, and streams each warp's keys
through a cp.async ring in shared memory. On an H200 with Qwen3-0.6B heads it took 15.7 against
20.5 µs a layer at 19,200 keys and 6.4 against 8.4 at 256, the combine included. It writes the
same split partials, which the Triton combine kernel merges.

It serves what it was measured on: one row (fast mode's lone decoding row), bf16 queries, head_dim
128, 1-8 query heads a KV head, compute capability 8.9 or later, where a block may hold its ~104 KiB
of shared memory (Hopper; Ada's 99 KiB is too little). It is compiled with NVRTC (nvrtc.py);
where that cannot happen, `eligible` says no and the Triton kernel serves every row.
"""

from __future__ import annotations

import functools

import torch

from kakeya.runtime.kernels import nvrtc as cuda_nvrtc
from kakeya.runtime.kernels.triton_rows import _combine_kernel

HEAD_DIM = 128
GROUPS = (1, 2, 4, 8)  # the kernel's entry points (fp8_row_attend_g<G>)
WARPS = 8
# Splits of a row's keys, one CTA each: 16 CTAs of 8 warps a KV head measured best (17.3 us at
# 19,200 keys, against 17.5-18.0 for 32 CTAs of 4 warps or 16 of 8 with one chunk ahead).
SPLITS = 16
RING_STAGES = 3  # as the .cu file's RING_STAGES: 16-key chunks in each warp's ring of slots
SHARED_MEM = WARPS * RING_STAGES * 4096  # dynamic: the rings (a chunk is 4 KiB of K and V)


def _static_shared(group: int) -> int:
    """The .cu file's static shared memory: each warp's partial (m, l, acc) per query head."""
    return WARPS * group * (2 + HEAD_DIM) * 4


def eligible(query: torch.Tensor, num_kv: int, kv_dtype: torch.dtype) -> bool:
    """Whether this kernel can serve these rows' shapes (the caller decides that they are lone)."""
    group = query.shape[1] // num_kv
    return (kv_dtype == torch.float8_e4m3fn and query.dtype == torch.bfloat16 and query.shape[2] == HEAD_DIM
            and group in GROUPS and query.shape[1] == group * num_kv and query.stride(2) == 1
            and _kernel(query.device.index, group) is not None)


def _kernel(device_index: int | None, group: int):
    if not _fits(device_index, group):
        return None
    return cuda_nvrtc.kernel("fp8_row.cu", f"fp8_row_attend_g{group}", device_index, SHARED_MEM)


@functools.cache
def _fits(device_index: int | None, group: int) -> bool:
    """Whether a block may hold this kernel's shared memory (Hopper: 227 KiB; Ada: 99, too little)."""
    optin = getattr(torch.cuda.get_device_properties(device_index), "shared_memory_per_block_optin", None)
    return optin is None or optin >= SHARED_MEM + _static_shared(group)


def attend_lone(query: torch.Tensor, out: torch.Tensor, rows: torch.Tensor, meta: torch.Tensor, layer: int,
                scale: float, num_kv: int, blocks: bool) -> None:
    """As triton_rows.attend_rows for the listed rows (query/out [rows, heads, 128], meta [4 or 5, rows]);
    blocks: meta has a lead row and rows whose lead is not 1 are left to the block kernel."""
    num_rows, num_heads = rows.shape[0], query.shape[1]
    kernel = _kernel(query.device.index, num_heads // num_kv)
    part_acc = torch.empty(num_rows * num_heads * SPLITS, HEAD_DIM, dtype=torch.float32, device=query.device)
    part_ml = torch.empty(num_rows * num_heads * SPLITS, 2, dtype=torch.float32, device=query.device)
    kernel(grid=(num_rows, num_kv, SPLITS), block=(32 * WARPS, 1, 1), shared_mem=SHARED_MEM,
           args=[query, query.stride(0), query.stride(1), rows, meta, meta.stride(0), layer, float(scale), part_acc,
                 part_ml, num_kv, SPLITS, int(blocks)])
    _combine_kernel[(num_rows, num_heads)](out, out.stride(0), out.stride(1), rows, meta, meta.stride(0), part_acc,
                                          part_ml, NUM_HEADS=num_heads, HEAD_DIM=HEAD_DIM, SPLITS=SPLITS,
                                          HAS_LEAD=blocks)
