"""A service turn's append over fp8 slabs: the runtime's CUDA block kernel (kernels/fp8_block.py)
against its Triton block kernel (kernels/triton_blocks.py).

The append is 65 rows (the previous turn's last token and 64 new ones) after H keys of history,
in the blocks the planner makes of them for each kernel: one block of 65 for the CUDA kernel
(fp8_block.BLOCK_ROWS), blocks of 32, 17 and 16 for the Triton one. Both write split partials
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
APPENDED = 65
BLOCKS = {"triton": (32, 17, 16), "cuda": (65,)}


def reference(q: torch.Tensor, slab: torch.Tensor, history: int, group: int) -> torch.Tensor:
    """fp32 causal attention of the appended rows over layer 1 of the slab."""
    end = history + APPENDED
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
    from kakeya.runtime.kernels import fp8_block as cuda_block_fp8
    from kakeya.runtime.kernels.triton_blocks import attend_blocks
    from kakeya.runtime.cuda.plan import BLOCK_ROWS

    cuda = torch.device("cuda")
    heads, appended, scale = KV_HEADS * args.group, APPENDED, HEAD_DIM ** -0.5
    listed = max(appended, args.padded_to)
    scratch = torch.zeros(LAYERS, 2, KV_HEADS, 1, HEAD_DIM, device=cuda).to(torch.float8_e4m3fn)
    padding = [[scratch.data_ptr(), 1, 0, 1, 1]] * (listed - appended)  # as the graph's padding rows

    def meta_of(slab, capacity: int, positions: list[int], blocks: tuple[int, ...]) -> torch.Tensor:
        """[6, listed]: the appended rows in `blocks`, the padding, and the leaders row."""
        leads = [lead for size in blocks for lead in (size, *[0] * (size - 1))]
        rows = [[slab.data_ptr(), capacity, p, p + 1, lead] for p, lead in zip(positions, leads)] + padding
        leaders = [r for r, lead in enumerate(leads) if lead > 1]
        meta = torch.tensor(rows, dtype=torch.int64).T.tolist() + [leaders + [-1] * (listed - len(leaders))]
        return torch.tensor(meta, dtype=torch.int64, device=cuda)

    results = []
    for n in args.histories:
        capacity = n + appended + 64
        slab = (torch.randn(LAYERS, 2, KV_HEADS, capacity, HEAD_DIM, device=cuda) * 2).to(torch.float8_e4m3fn)
        q = (torch.randn(listed, heads, HEAD_DIM, device=cuda) * 3).to(torch.bfloat16)
        rows = torch.arange(listed, device=cuda)
        positions = list(range(n, n + appended))
        meta = {name: meta_of(slab, capacity, positions, blocks) for name, blocks in BLOCKS.items()}
        expected = reference(q[:appended], slab, n, args.group)
        out = torch.empty_like(q)
        kernels = {"triton": lambda layer: attend_blocks(q, out, rows, meta["triton"], layer, scale, KV_HEADS,
                                                         torch.float16, BLOCK_ROWS, torch.float8_e4m3fn)}
        if cuda_block_fp8.eligible(q, meta["cuda"], KV_HEADS, torch.float8_e4m3fn):
            kernels["cuda"] = lambda layer: cuda_block_fp8.attend_blocks(q, out, rows, meta["cuda"], layer, scale,
                                                                         KV_HEADS, cuda_block_fp8.BLOCK_ROWS)
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
