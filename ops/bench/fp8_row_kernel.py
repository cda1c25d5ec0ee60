"""A hand-written CUDA kernel for one decoding row over fp8 slabs, against the runtime's Triton kernel.

The runtime's row kernel (Triton) reads a V tile for the PV product one byte at a time from shared
memory (README, long session). `fp8_row_attend.cu` loads V in 4-byte words from global memory and
regroups the bytes in registers instead. It is compiled at run time with NVRTC
(`torch.cuda._compile_kernel`), is not used by the runtime, and serves lone rows only. Both kernels
write split partials that the runtime's combine kernel merges; both are timed with that combine,
per layer over 28 layers' slabs (Qwen3-0.6B heads), replayed from a CUDA graph. Errors are the
largest absolute difference from an fp32 reference. Prints one JSON document.

    python ops/bench/fp8_row_kernel.py --histories 19200 9600 3840 256 17
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch

LAYERS, KV_HEADS, HEADS, HEAD_DIM = 28, 8, 16, 128
# (warps per CTA, chunks loaded ahead, splits): the best of a wider sweep on an H200
VARIANTS = ((4, 1, 32), (8, 1, 16), (4, 2, 32), (8, 2, 16))


def compile_variants() -> dict:
    source = (pathlib.Path(__file__).parent / "fp8_row_attend.cu").read_text()
    names = {(w, depth): f"fp8_row_attend_w{w}" + ("d2" if depth == 2 else "") for w, depth, _ in VARIANTS}
    return {key: torch.cuda._compile_kernel(source, name, nvcc_options=["--use_fast_math", "-std=c++17"])
            for key, name in names.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=int, nargs="+", default=[19200, 9600, 3840, 256, 17])
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        parser.error("needs a CUDA device of compute capability 8.9 or later (fp8 conversions, mma.sync)")
    from attention_kernel import timed_us  # imports triton, which only CUDA builds of torch ship
    from kakeya.runtime import cuda_kernels as ck

    cuda = torch.device("cuda")
    kernels = compile_variants()
    scale = HEAD_DIM ** -0.5
    results = []
    for n in args.histories:
        capacity = n + 64
        slab = (torch.randn(LAYERS, 2, KV_HEADS, capacity, HEAD_DIM, device=cuda) * 2).to(torch.float8_e4m3fn)
        q = (torch.randn(1, HEADS, HEAD_DIM, device=cuda) * 3).to(torch.bfloat16)
        rows = torch.arange(1, device=cuda)
        meta = torch.tensor([[slab.data_ptr()], [capacity], [n - 1], [n]], dtype=torch.int64, device=cuda)
        keys = slab[1, 0, :, :n].float().repeat_interleave(2, 0)
        values = slab[1, 1, :, :n].float().repeat_interleave(2, 0)
        weights = torch.softmax(torch.einsum("hd,hkd->hk", q[0].float(), keys) * scale, -1)
        reference = torch.einsum("hk,hkd->hd", weights, values)
        out = torch.empty_like(q)

        def triton(layer: int) -> None:
            ck.attend_rows(q, out, rows, meta, layer, scale, KV_HEADS, torch.float16, ck.MAX_SPLITS, block=ck.FP8_BLOCK_N,
                           num_warps=4, num_stages=3, variant="dot_aligned", kv_dtype=torch.float8_e4m3fn)

        point = {"history": n}
        triton(1)
        error = float((out[0].float() - reference).abs().max())  # before the timed replays overwrite `out`
        us = timed_us(lambda: [triton(i) for i in range(LAYERS)], repeats=5) / LAYERS
        point["triton"] = {"us": round(us, 2), "max_err": round(error, 4)}
        for warps, depth, splits in VARIANTS:
            part_acc = torch.empty(HEADS * splits, HEAD_DIM, device=cuda)
            part_ml = torch.empty(HEADS * splits, 2, device=cuda)

            def cuda_row(layer: int) -> None:
                kernels[(warps, depth)](grid=(1, KV_HEADS, splits), block=(32 * warps, 1, 1),
                                        args=[q, q.stride(0), q.stride(1), rows, meta, meta.stride(0), layer, scale,
                                              part_acc, part_ml, KV_HEADS, splits])
                ck._combine_kernel[(1, HEADS)](out, out.stride(0), out.stride(1), rows, meta, meta.stride(0), part_acc,
                                               part_ml, NUM_HEADS=HEADS, HEAD_DIM=HEAD_DIM, SPLITS=splits, HAS_LEAD=False)

            cuda_row(1)
            error = float((out[0].float() - reference).abs().max())
            us = timed_us(lambda: [cuda_row(i) for i in range(LAYERS)], repeats=5) / LAYERS
            point[f"cuda_w{warps}_ahead{depth}_s{splits}"] = {
                "us": round(us, 2), "max_err": round(error, 4), "triton_over_cuda": round(point["triton"]["us"] / us, 3)}
        results.append(point)
    print(json.dumps({"benchmark": "fp8_row_kernel", "device_name": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "layers": LAYERS, "kv_heads": KV_HEADS, "heads": HEADS, "head_dim": HEAD_DIM,
                      "note": "us per layer with the combine kernel; max_err against an fp32 reference",
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
