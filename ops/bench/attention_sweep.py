"""Launch settings of the CUDA attention kernels, timed the way a step runs them, on one GPU.

Each setting runs once per layer over 28 layers, as a decode step does, on slabs sized so that a
step's K/V (about 600 MB at least) streams from memory instead of staying in L2; a kernel timed
on one small slab over and over reads from cache and flatters small splits. Qwen3-0.6B heads
(16 query, 8 KV, head_dim 128), bf16.

- row kernel (`triton_rows.attend_rows`): R decoding rows of R sessions, each over K keys, per
  split count, key block, warps and stages;
- block kernel (`triton_blocks.attend_blocks`): a 65-row append (the previous turn's last token and 64 new
  ones) after H keys of history, per rows per block, split count, warps and stages.

The baseline of each case, same run, is the runtime's own setting; every row reports its time
and the ratio to it. Prints one JSON document.

    python ops/bench/attention_sweep.py [--only row|block]
"""

from __future__ import annotations

import argparse
import functools
import json
import math

import torch
from attention_kernel import timed_us

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 16, 8, 128, 28
DTYPE = torch.bfloat16
ROW_CASES = ((1, 1024), (1, 4096), (1, 12288), (1, 19300), (8, 4096), (64, 256))
ROW_SETTINGS = [(splits, block, warps, stages) for splits in (16, 32, 64)
                for block, warps, stages in ((64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 8, 2))]
BLOCK_HISTORIES = (0, 4096, 19200)
BLOCK_SETTINGS = [(rows, splits, warps, stages) for rows in (16, 32, 64) for splits in (4, 8, 16)
                  for warps in (4, 8) for stages in (2, 3)]
APPEND = 65


def slabs_for(rows: int, capacity: int) -> tuple[list[torch.Tensor], int]:
    """One slab per row, with as many layers (up to 28) as make a step read >= 600 MB."""
    per_layer = rows * 2 * KV_HEADS * capacity * HEAD_DIM * 2
    layers = max(1, min(LAYERS, math.ceil(600e6 / per_layer)))
    return [torch.randn(layers, 2, KV_HEADS, capacity, HEAD_DIM, dtype=DTYPE, device="cuda") for _ in range(rows)], layers


def per_layer_us(launch, layers: int) -> float:
    def step() -> None:
        for layer in range(LAYERS):
            launch(layer % layers)
    step()
    return timed_us(step, repeats=5) / LAYERS


def _launch_rows(query, out, index, meta, splits, block, warps, stages, variant, layer: int) -> None:
    from kakeya.runtime.kernels.triton_rows import attend_rows

    attend_rows(query, out, index, meta, layer, HEAD_DIM ** -0.5, KV_HEADS, DTYPE, splits, block=block,
                num_warps=warps, num_stages=stages, variant=variant)


def _launch_blocks(query, out, index, meta, part_acc, part_ml, rows_per_block, splits, warps, stages,
                   layer: int) -> None:
    import kakeya.runtime.kernels.triton_blocks as cb
    import kakeya.runtime.kernels.triton_rows as ck

    cb._attend_block_kernel[(APPEND, KV_HEADS, splits)](
        query, query.stride(0), query.stride(1), index, meta, meta.stride(0), layer, HEAD_DIM ** -0.5,
        part_acc, part_ml, NUM_KV=KV_HEADS, GROUP=HEADS // KV_HEADS, GROUP_PAD=HEADS // KV_HEADS,
        ROWS=rows_per_block, HEAD_DIM=HEAD_DIM, BLOCK=cb.BLOCK_KEYS, SPLITS=splits,
        MIN_SPLIT=ck.MIN_SPLIT_KEYS, DTYPE=ck._TL_DTYPE[DTYPE], PRECISION="tf32",
        KV_DTYPE=ck._TL_DTYPE[DTYPE], num_warps=warps, num_stages=stages)
    cb._combine_block_kernel[(APPEND, HEADS)](out, out.stride(0), out.stride(1), index, meta, meta.stride(0),
                                              part_acc, part_ml, NUM_HEADS=HEADS, HEAD_DIM=HEAD_DIM, SPLITS=splits)


def row_case(rows: int, keys: int) -> dict:
    import kakeya.runtime.cuda.attention as ca
    import kakeya.runtime.kernels.triton_rows as ck

    slabs, layers = slabs_for(rows, keys)
    meta = torch.tensor([[s.data_ptr() for s in slabs], [keys] * rows, [keys - 1] * rows, [keys] * rows],
                        dtype=torch.int64, device="cuda")
    query = torch.randn(rows, HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    out, index = torch.empty_like(query), torch.arange(rows, device="cuda")
    runtime_stages = ca.ROW_STAGES if rows > 1 else ca.LONE_ROW_STAGES
    runtime = (ck.split_limit(rows, KV_HEADS, False), ck.BLOCK_N, 4, runtime_stages)
    times = {}
    for setting in dict.fromkeys([runtime, *ROW_SETTINGS]):
        splits, block, warps, stages = setting
        launch = functools.partial(_launch_rows, query, out, index, meta, splits, block, warps, stages, ca.ROW_VARIANT)
        times[setting] = per_layer_us(launch, layers)
    names = ("splits", "block", "warps", "stages")
    return {"rows": rows, "keys": keys, "runtime": dict(zip(names, runtime)), "runtime_us": round(times[runtime], 2),
            "settings": sorted(({**dict(zip(names, s)), "us": round(t, 2), "ratio_vs_runtime": round(t / times[runtime], 3)}
                                for s, t in times.items()), key=lambda row: row["us"])}


def block_case(history: int) -> dict:
    import kakeya.runtime.kernels.triton_blocks as cb
    from kakeya.runtime.cuda.plan import BLOCK_ROWS

    total = history + APPEND
    (slab,), layers = slabs_for(1, total)
    query = torch.randn(APPEND, HEADS, HEAD_DIM, dtype=DTYPE, device="cuda")
    out, index = torch.empty_like(query), torch.arange(APPEND, device="cuda")
    runtime = (BLOCK_ROWS, cb.block_splits(APPEND), 4, cb.BLOCK_STAGES)
    times = {}
    for setting in dict.fromkeys([runtime, *BLOCK_SETTINGS]):
        rows_per_block, splits, warps, stages = setting
        sizes = [rows_per_block] * (APPEND // rows_per_block) + ([APPEND % rows_per_block] if APPEND % rows_per_block else [])
        if len(sizes) > 1 and sizes[-1] == 1:  # as cuda_plan.block_leads does
            sizes[-2:] = [rows_per_block // 2 + 1, rows_per_block // 2]
        leads = [lead for size in sizes for lead in (size, *[0] * (size - 1))]
        meta = torch.tensor([[slab.data_ptr()] * APPEND, [total] * APPEND, [history + j for j in range(APPEND)],
                             [history + j + 1 for j in range(APPEND)], leads], dtype=torch.int64, device="cuda")
        part_acc = torch.empty(APPEND * HEADS * splits, HEAD_DIM, dtype=torch.float32, device="cuda")
        part_ml = torch.empty(APPEND * HEADS * splits, 2, dtype=torch.float32, device="cuda")

        launch = functools.partial(_launch_blocks, query, out, index, meta, part_acc, part_ml, rows_per_block,
                                   splits, warps, stages)
        times[setting] = per_layer_us(launch, layers)
    names = ("rows_per_block", "splits", "warps", "stages")
    return {"append": APPEND, "history": history, "runtime": dict(zip(names, runtime)),
            "runtime_us": round(times[runtime], 2),
            "settings": sorted(({**dict(zip(names, s)), "us": round(t, 2), "ratio_vs_runtime": round(t / times[runtime], 3)}
                                for s, t in times.items()), key=lambda row: row["us"])[:12]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("row", "block"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("attention_sweep.py needs a CUDA GPU")
    document = {"benchmark": "attention_sweep", "device_name": torch.cuda.get_device_name(), "dtype": "bfloat16",
                "note": "microseconds per layer; ratio_vs_runtime < 1 is faster than the runtime's setting"}
    if args.only != "block":
        document["row_kernel"] = [row_case(rows, keys) for rows, keys in ROW_CASES]
    if args.only != "row":
        document["block_kernel"] = [block_case(history) for history in BLOCK_HISTORIES]
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
