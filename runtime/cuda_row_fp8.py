"""A lone decoding row over fp8 slabs through a CUDA kernel compiled at run time (cuda_row_fp8.cu).

The Triton row kernel reads the V tile of its PV product one byte at a time from shared memory
(README, long session); this kernel regroups V's bytes in registers. On an H200 with Qwen3-0.6B
heads it took 17.3 against 20.7 µs a layer at 19,200 keys and 6.6-6.8 against 8.3 at 256, the
combine included (`ops/bench/fp8_row_kernel.py`). It writes the same split partials, which the
Triton combine kernel merges.

It serves what it was measured on: one row (fast mode's lone decoding row), bf16 queries, head_dim
128, 1-8 query heads a KV head, compute capability 8.9 or later. NVRTC comes through
`torch.cuda._compile_kernel` (torch 2.8 and later); where that is missing or the compile fails,
`eligible` says no, with the reason logged once, and the Triton kernel serves every row.
"""

from __future__ import annotations

import functools
import pathlib

import structlog
import torch

from .cuda_kernels import _combine_kernel

log = structlog.get_logger(__name__)

HEAD_DIM = 128
GROUPS = (1, 2, 4, 8)  # the kernel's entry points (fp8_row_attend_g<G>)
WARPS = 8
# Splits of a row's keys, one CTA each: 16 CTAs of 8 warps a KV head measured best (17.3 us at
# 19,200 keys, against 17.5-18.0 for 32 CTAs of 4 warps or 16 of 8 with one chunk ahead).
SPLITS = 16


def eligible(query: torch.Tensor, num_kv: int, kv_dtype: torch.dtype) -> bool:
    """Whether this kernel can serve these rows' shapes (the caller decides that they are lone)."""
    group = query.shape[1] // num_kv
    return (kv_dtype == torch.float8_e4m3fn and query.dtype == torch.bfloat16 and query.shape[2] == HEAD_DIM
            and group in GROUPS and query.shape[1] == group * num_kv and query.stride(2) == 1
            and _kernel(query.device.index, group) is not None)


@functools.cache
def _kernel(device_index: int | None, group: int):
    """The compiled entry point for `group` query heads a KV head, or None when it cannot run here.
    Compiled once a device and group (about a second), on the first step that needs it: the
    warm-up forward before graph capture."""
    if torch.cuda.get_device_capability(device_index) < (8, 9):
        return None  # no e4m3 conversions; fp8 slabs are refused there anyway
    compile_kernel = getattr(torch.cuda, "_compile_kernel", None)
    if compile_kernel is None:
        log.info("fp8_row_kernel_unavailable", reason=f"torch {torch.__version__} has no torch.cuda._compile_kernel")
        return None
    source = pathlib.Path(__file__).with_name("cuda_row_fp8.cu").read_text()
    try:
        with torch.cuda.device(device_index):
            return compile_kernel(source, f"fp8_row_attend_g{group}", nvcc_options=["--use_fast_math", "-std=c++17"])
    except Exception as exc:  # noqa: BLE001 - any failure leaves the Triton kernel in place
        log.warning("fp8_row_kernel_unavailable", reason=f"{type(exc).__name__}: {exc}"[:500])
        return None


def attend_lone(query: torch.Tensor, out: torch.Tensor, rows: torch.Tensor, meta: torch.Tensor, layer: int,
                scale: float, num_kv: int, blocks: bool) -> None:
    """As cuda_kernels.attend_rows for the listed rows (query/out [rows, heads, 128], meta [4 or 5, rows]);
    blocks: meta has a lead row and rows whose lead is not 1 are left to the block kernel."""
    num_rows, num_heads = rows.shape[0], query.shape[1]
    kernel = _kernel(query.device.index, num_heads // num_kv)
    part_acc = torch.empty(num_rows * num_heads * SPLITS, HEAD_DIM, dtype=torch.float32, device=query.device)
    part_ml = torch.empty(num_rows * num_heads * SPLITS, 2, dtype=torch.float32, device=query.device)
    kernel(grid=(num_rows, num_kv, SPLITS), block=(32 * WARPS, 1, 1),
           args=[query, query.stride(0), query.stride(1), rows, meta, meta.stride(0), layer, float(scale), part_acc,
                 part_ml, num_kv, SPLITS, int(blocks)])
    _combine_kernel[(num_rows, num_heads)](out, out.stride(0), out.stride(1), rows, meta, meta.stride(0), part_acc,
                                          part_ml, NUM_HEADS=num_heads, HEAD_DIM=HEAD_DIM, SPLITS=SPLITS,
                                          HAS_LEAD=blocks)
