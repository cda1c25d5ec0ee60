"""The lone fp8 row: the runtime's CUDA kernel (kernels/fp8_row.py) against its Triton row kernel.

The Triton row kernel reads a V tile for the PV product one byte at a time from shared memory
(docs/cuda.md); `runtime/kernels/fp8_row.cu` regroups V's bytes in registers. Both write split
partials that the Triton combine kernel merges, and both are timed with it, per layer over 28
layers' slabs (Qwen3-0.6B heads unless --group says otherwise), replayed from a CUDA graph. Errors
are the largest absolute difference from an fp32 reference. Prints one JSON document.

    python ops/bench/fp8_row_kernel.py --histories 19200 9600 3840 256 17
"""

from __future__ import annotations

import argparse
import json

import torch

LAYERS, KV_HEADS, HEAD_DIM = 28, 8, 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=int, nargs="+", default=[19200, 9600, 3840, 256, 17])
    parser.add_argument("--group", type=int, default=2, help="query heads a KV head")
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        parser.error("needs a CUDA device of compute capability 8.9 or later (fp8 conversions, mma.sync)")
    from attention_kernel import timed_us  # imports triton, which only CUDA builds of torch ship
    from kakeya.runtime.kernels import triton_rows as ck
    from kakeya.runtime.kernels import fp8_row as cuda_row_fp8

    cuda = torch.device("cuda")
    heads = KV_HEADS * args.group
    scale = HEAD_DIM ** -0.5
    results = []
    for n in args.histories:
        capacity = n + 64
        slab = (torch.randn(LAYERS, 2, KV_HEADS, capacity, HEAD_DIM, device=cuda) * 2).to(torch.float8_e4m3fn)
        q = (torch.randn(1, heads, HEAD_DIM, device=cuda) * 3).to(torch.bfloat16)
        rows = torch.arange(1, device=cuda)
        meta = torch.tensor([[slab.data_ptr()], [capacity], [n - 1], [n]], dtype=torch.int64, device=cuda)
        keys = slab[1, 0, :, :n].float().repeat_interleave(args.group, 0)
        values = slab[1, 1, :, :n].float().repeat_interleave(args.group, 0)
        weights = torch.softmax(torch.einsum("hd,hkd->hk", q[0].float(), keys) * scale, -1)
        reference = torch.einsum("hk,hkd->hd", weights, values)
        out = torch.empty_like(q)

        def triton(layer: int) -> None:
            ck.attend_rows(q, out, rows, meta, layer, scale, KV_HEADS, torch.float16, ck.MAX_SPLITS,
                           block=ck.FP8_BLOCK_N, num_warps=4, num_stages=3, variant="dot_aligned",
                           kv_dtype=torch.float8_e4m3fn)

        point = {"history": n}
        triton(1)
        error = float((out[0].float() - reference).abs().max())  # before the timed replays overwrite `out`
        us = timed_us(lambda: [triton(i) for i in range(LAYERS)], repeats=5) / LAYERS
        point["triton"] = {"us": round(us, 2), "max_err": round(error, 4)}
        if not cuda_row_fp8.eligible(q, KV_HEADS, torch.float8_e4m3fn):
            point["cuda"] = "not eligible here (see the log)"
        else:
            def cuda_row(layer: int) -> None:
                cuda_row_fp8.attend_lone(q, out, rows, meta, layer, scale, KV_HEADS, False)

            cuda_row(1)
            error = float((out[0].float() - reference).abs().max())
            us = timed_us(lambda: [cuda_row(i) for i in range(LAYERS)], repeats=5) / LAYERS
            point["cuda"] = {"us": round(us, 2), "max_err": round(error, 4),
                             "triton_over_cuda": round(point["triton"]["us"] / us, 3)}
        results.append(point)
    print(json.dumps({"benchmark": "fp8_row_kernel", "device_name": torch.cuda.get_device_name(),
                      "torch": torch.__version__, "layers": LAYERS, "kv_heads": KV_HEADS, "heads": heads,
                      "head_dim": HEAD_DIM,
                      "note": "us per layer with the combine kernel; max_err against an fp32 reference",
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
