"""The row-attention kernels (runtime/kernels/triton_rows.py) against SDPA, per variant and setting, on one GPU.

Decode attention only: each row attends to `keys` keys of its own slab (Qwen3-0.6B heads: 16 query
heads, 8 KV heads, head_dim 128, bf16). Every kernel variant ("dot", "dot_aligned"; see
attend_rows) runs with each of its launch settings, timed as 20 launches inside a CUDA graph, as
the runtime runs it, and checked against float32 SDPA. The baseline, same run, is SDPA's own kernel
on the same rows as one padded batch. Prints one JSON document; "best" gives each variant's
fastest setting per case.

    python ops/bench/attention_kernel.py [--variants dot_aligned]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128
CASES = ((1, 19300), (1, 4096), (8, 4096), (64, 640), (64, 4096))
# (block, num_warps, num_stages) per variant. "dot_aligned" stages K/V in shared memory, so fewer
# stages let more programs share an SM.
SETTINGS = {
    "dot": ((64, 4, 3), (64, 4, 4), (64, 8, 3), (32, 4, 3), (128, 4, 3), (128, 8, 3), (128, 8, 4)),
    "dot_aligned": ((64, 4, 3), (64, 4, 2), (32, 4, 3), (32, 4, 2), (128, 4, 2), (128, 8, 3)),
}
LAUNCHES = 20


def timed_us(fn, repeats: int = 10) -> float:
    """Microseconds per call of fn, replayed from a CUDA graph of LAUNCHES calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(LAUNCHES):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000 / (repeats * LAUNCHES)


def case(rows: int, keys: int, dtype: torch.dtype, kernels: list[str]) -> dict:
    from kakeya.runtime.kernels.triton_rows import attend_rows, split_limit

    cuda = torch.device("cuda")
    slabs = [torch.randn(1, 2, KV_HEADS, keys, HEAD_DIM, dtype=dtype, device=cuda) for _ in range(rows)]
    meta = torch.tensor([[s.data_ptr() for s in slabs], [keys] * rows, [keys - 1] * rows, [keys] * rows],
                        dtype=torch.int64, device=cuda)
    query = torch.randn(rows, HEADS, HEAD_DIM, dtype=dtype, device=cuda)
    index = torch.arange(rows, device=cuda)
    out = torch.empty_like(query)
    keys_t = torch.stack([s[0, 0] for s in slabs])  # [rows, kv_heads, keys, head_dim]
    values_t = torch.stack([s[0, 1] for s in slabs])
    expected = F.scaled_dot_product_attention(query[:, :, None].float(), keys_t.float(), values_t.float(),
                                              scale=HEAD_DIM ** -0.5, enable_gqa=True)[:, :, 0]
    q4 = query[:, :, None]
    baseline = timed_us(lambda: F.scaled_dot_product_attention(q4, keys_t, values_t, scale=HEAD_DIM ** -0.5,
                                                               enable_gqa=True))
    splits = split_limit(rows, KV_HEADS, False)
    kv_bytes = rows * keys * KV_HEADS * HEAD_DIM * 2 * query.element_size()
    variants = []
    for kernel in kernels:
        for block, warps, stages in SETTINGS[kernel]:
            def run():
                attend_rows(query, out, index, meta, 0, HEAD_DIM ** -0.5, KV_HEADS, dtype, splits,
                            block=block, num_warps=warps, num_stages=stages, variant=kernel)
            out.fill_(float("nan"))  # a variant that skips an element cannot inherit the previous one's
            run()
            error = float((out.float() - expected).abs().max())
            us = timed_us(run)
            variants.append({"variant": kernel, "block": block, "num_warps": warps, "num_stages": stages,
                             "us": round(us, 2), "tb_s": round(kv_bytes / us / 1e6, 2),
                             "max_abs_error": round(error, 5), "speedup_vs_sdpa": round(baseline / us, 2)})
    best = {}
    for v in variants:
        if v["variant"] not in best or v["us"] < best[v["variant"]]["us"]:
            best[v["variant"]] = {k: v[k] for k in ("block", "num_warps", "num_stages", "us", "tb_s",
                                                    "speedup_vs_sdpa")}
    return {"rows": rows, "keys": keys, "splits": splits, "kv_mb": round(kv_bytes / 1e6, 1),
            "sdpa_us": round(baseline, 2), "sdpa_tb_s": round(kv_bytes / baseline / 1e6, 2), "best": best,
            "variants": variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--variants", default=",".join(SETTINGS), help="comma-separated kernel variants")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    kernels = args.variants.split(",")
    unknown = sorted(set(kernels) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(SETTINGS)}")
    torch.manual_seed(0)
    results = [case(rows, keys, dtype, kernels) for rows, keys in CASES]
    print(json.dumps({"benchmark": "attention_kernel", "device_name": torch.cuda.get_device_name(),
                      "dtype": args.dtype, "torch": torch.__version__, "heads": HEADS, "kv_heads": KV_HEADS,
                      "head_dim": HEAD_DIM, "note": "per-layer decode attention; us per launch inside a CUDA graph",
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
