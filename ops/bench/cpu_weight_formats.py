"""One decode step's layer GEMMs (a SmolLM2-135M's 30 layers) in each weight format torch offers on
the CPU, the weights streamed from memory as in decoding, interleaved rounds, same run.

Formats: fp32 on MKL-packed weights (the default path), int8 per-channel with dynamic activations
(fbgemm), fp16 weights (fbgemm), bf16 (oneDNN), int8 weight-only (_weight_int8pack_mm) and int4
group-32 with scales and zero points (_weight_int4pack_mm_for_cpu, the form that holds GGUF Q4_1),
the last two on fp32 activations and on bf16 ones (as --cpu-weights int8 / int4 run them, the
conversions of input and output included). Prints medians in ms and each format's ratio to fp32.

    python ops/bench/cpu_weight_formats.py --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import torch

SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]


def formats(weight: torch.Tensor) -> dict:
    """Each format's call on [rows, in] activations."""
    n, k = weight.shape
    packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, 8)
    scales = (weight.abs().amax(1) / 127).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qweight = torch.quantize_per_channel(weight, scales, torch.zeros_like(scales, dtype=torch.long), 0,
                                             torch.qint8)
    int8 = torch.ops.quantized.linear_prepack(qweight, None)
    fp16 = torch.ops.quantized.linear_prepack_fp16(weight, None)
    bf16 = weight.to(torch.bfloat16)
    w8 = torch.round(weight / scales.float()[:, None]).to(torch.int8)
    groups = weight.reshape(n, k // 32, 32)
    low, step = groups.amin(-1), (groups.amax(-1) - groups.amin(-1)) / 15
    q4 = torch.round((groups - low[..., None]) / step[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
    q4_packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 1)
    scale_zero = torch.stack([step.t(), (low + 8 * step).t()], -1).contiguous()
    scales_bf16, scale_zero_bf16 = scales.to(torch.bfloat16), scale_zero.to(torch.bfloat16)
    return {
        "fp32_mkl_packed": lambda x: torch.ops.mkl._mkl_linear(x, packed, weight, None, x.shape[0]),
        "int8_fbgemm_dynamic": lambda x: torch.ops.quantized.linear_dynamic(x, int8, False),
        "fp16_fbgemm": lambda x: torch.ops.quantized.linear_dynamic_fp16(x, fp16),
        "bf16_onednn": lambda x: torch.nn.functional.linear(x.to(torch.bfloat16), bf16),
        "int8_weight_only": lambda x: torch.ops.aten._weight_int8pack_mm(x, w8, scales.float()),
        "int4_group32": lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, q4_packed, 32, scale_zero),
        "int8_weight_only_bf16_activations": lambda x: torch.ops.aten._weight_int8pack_mm(
            x.to(torch.bfloat16), w8, scales_bf16).float(),
        "int4_group32_bf16_activations": lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(torch.bfloat16), q4_packed, 32, scale_zero_bf16).float(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # Every layer's weights are distinct tensors: a step reads them from memory, not from cache.
    calls = [(k, formats(torch.randn(n, k) * 0.05)) for _ in range(args.layers) for n, k in SHAPES]
    names = list(calls[0][1])
    times: dict[tuple[str, int], list[float]] = {}
    for index in range(args.rounds):
        for rows in (1, 8):
            inputs = {k: torch.randn(rows, k) for k in (576, 1536)}
            for name in (names if index % 2 == 0 else list(reversed(names))):
                begin = time.perf_counter()
                for in_features, call in calls:
                    call[name](inputs[in_features])
                times.setdefault((name, rows), []).append((time.perf_counter() - begin) * 1000)
    result = {"benchmark": "cpu_weight_formats", "layers": args.layers, "threads": args.threads, "rounds": args.rounds,
              "machine": os.uname().machine}
    for rows in (1, 8):
        medians = {name: statistics.median(times[name, rows]) for name in names}
        result[f"rows_{rows}_ms"] = {name: round(value, 1) for name, value in medians.items()}
        result[f"rows_{rows}_speedup_over_fp32"] = {name: round(medians["fp32_mkl_packed"] / value, 2)
                                                    for name, value in medians.items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
