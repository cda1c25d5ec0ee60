"""A service turn's append over fp8 slabs: the runtime's CUDA block kernel (cuda_block_fp8) against
its Triton block kernel (cuda_block_kernel).

The append is 65 rows (the previous turn's last token and 64 new ones) after H keys of history,
in the blocks the planner makes of them (32, 17 and 16 rows). Both kernels write split partials
that the Triton combine kernel merges, and both are timed with it, per layer over 28 layers' slabs
(Qwen3-0.6B heads unless --group says otherwise), replayed from a CUDA graph. Errors are the
largest absolute difference from an fp32 reference over every row. Prints one JSON document.

A step's graph lists every row of its bucket (96 for these 65): `--padded-to 96` adds the padding
rows the graph holds (one key each on a scratch slab, served by the row kernel), so that both
kernels launch the grids they launch in a step.

    python ops/bench/fp8_block_kernel.py --histories 19200 9600 3840 256 0 [--padded-to 96]
"""

from __future__ import annotations

import argparse
import json

import torch

LAYERS, KV_HEADS, HEAD_DIM = 28, 8, 128
BLOCKS = (32, 17, 16)


def reference(q: torch.Tensor, slab: torch.Tensor, history: int, group: int) -> torch.Tensor:
    """fp32 causal attention of the appended rows over layer 1 of the slab."""
    end = history + sum(BLOCKS)
    keys = slab[1, 0, :, :end].float().repeat_interleave(group, 0)
    values = slab[1, 1, :, :end].float().repeat_interleave(group, 0)
    scores = torch.einsum("rhd,hkd->rhk", q.float(), keys) * HEAD_DIM ** -0.5
    visible = torch.arange(end, device=q.device)[None, :] <= torch.arange(history, end, device=q.device)[:, None]
    weights = torch.softmax(scores.masked_fill(~visible[:, None, :], float("-inf")), -1)
    return torch.einsum("rhk,hkd->rhd", weights, values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=int, nargs="+", default=[19200, 9600, 3840, 256, 0])
    parser.add_argument("--group", type=int, default=2, help="query heads a KV head")
    parser.add_argument("--padded-to", type=int, default=0, help="rows listed, padding included (a graph's bucket)")
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        parser.error("needs a CUDA device of compute capability 8.9 or later (fp8 conversions, mma.sync)")
    from attention_kernel import timed_us  # imports triton, which only CUDA builds of torch ship
    from kakeya.runtime import cuda_block_fp8
    from kakeya.runtime.cuda_block_kernel import attend_blocks
    from kakeya.runtime.cuda_plan import BLOCK_ROWS

    cuda = torch.device("cuda")
    heads, appended, scale = KV_HEADS * args.group, sum(BLOCKS), HEAD_DIM ** -0.5
    listed = max(appended, args.padded_to)
    scratch = torch.zeros(LAYERS, 2, KV_HEADS, 1, HEAD_DIM, device=cuda).to(torch.float8_e4m3fn)
    padding = [[scratch.data_ptr(), 1, 0, 1, 1]] * (listed - appended)  # as the graph's padding rows
    results = []
    for n in args.histories:
        capacity = n + appended + 64
        slab = (torch.randn(LAYERS, 2, KV_HEADS, capacity, HEAD_DIM, device=cuda) * 2).to(torch.float8_e4m3fn)
        q = (torch.randn(listed, heads, HEAD_DIM, device=cuda) * 3).to(torch.bfloat16)
        rows = torch.arange(listed, device=cuda)
        positions = list(range(n, n + appended))
        leads = [lead for size in BLOCKS for lead in (size, *[0] * (size - 1))]
        appended_meta = [[slab.data_ptr(), capacity, p, p + 1, lead] for p, lead in zip(positions, leads)]
        meta = torch.tensor(appended_meta + padding, dtype=torch.int64, device=cuda).T.contiguous()
        expected = reference(q[:appended], slab, n, args.group)
        out = torch.empty_like(q)
        kernels = {"triton": lambda layer: attend_blocks(q, out, rows, meta, layer, scale, KV_HEADS, torch.float16,
                                                         BLOCK_ROWS, torch.float8_e4m3fn)}
        if cuda_block_fp8.eligible(q, rows, KV_HEADS, torch.float8_e4m3fn):
            kernels["cuda"] = lambda layer: cuda_block_fp8.attend_blocks(q, out, rows, meta, layer, scale, KV_HEADS,
                                                                         BLOCK_ROWS)
        point = {"history": n}
        for name, launch in kernels.items():
            launch(1)
            error = float((out[:appended].float() - expected).abs().max())  # before the timed replays overwrite `out`
            us = timed_us(lambda: [launch(i) for i in range(LAYERS)], repeats=5) / LAYERS
            point[name] = {"us": round(us, 2), "max_err": round(error, 4)}
        if "cuda" in point:
            point["cuda"]["triton_over_cuda"] = round(point["triton"]["us"] / point["cuda"]["us"], 3)
        else:
            point["cuda"] = "not eligible here (see the log)"
        results.append(point)
    print(json.dumps({"benchmark": "fp8_block_kernel", "device_name": torch.cuda.get_device_name(),
                      "torch": torch.__version__, "layers": LAYERS, "kv_heads": KV_HEADS, "heads": heads,
                      "head_dim": HEAD_DIM, "blocks": BLOCKS, "rows_listed": listed,
                      "note": "us per layer with the combine kernel; max_err against an fp32 reference",
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
