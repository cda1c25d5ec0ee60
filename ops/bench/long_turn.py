"""Engine-level turn latency of one long session on CUDA: append 64 tokens, generate 32, at growing history.

Isolates what the suite's long-session ratio (turn 200 / turn 1) is made of: the prefill step of
the appended chunk over the whole history, and the decode steps, on a Qwen3-0.6B-shaped
random-weight model. Also reports the floor set by memory bandwidth: every decode step must read
the whole history's K/V. Prints one JSON document.

    python ops/bench/long_turn.py --histories 0 4800 19200
"""

from __future__ import annotations

import argparse
import json
import time

import structlog
import torch

from engine_step import SHAPES
from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.forward.session_kv import KVShape, slab_dtype
from kakeya.runtime.engine.loader import describe
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.step import StepRow, StopRule
from kakeya.runtime.engine.sampler import Sampler, SamplingParams

def turn(runner: ModelRunner, kv, append: list[int], generate: int) -> tuple[float, float, float]:
    """(seconds of the append step, seconds per decode step, GPU seconds per decode step) of one
    turn. The GPU time comes from events on the stream around the decode steps: when it matches
    the host's time, the GPU never waited for the host and the turn is bound by its kernels."""
    sampler = Sampler(SamplingParams())
    torch.cuda.synchronize()
    started = time.perf_counter()
    token = runner.run([StepRow(kv, tuple(append), sampler)])[0][-1]
    torch.cuda.synchronize()
    prefill = time.perf_counter() - started
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    started = time.perf_counter()
    begin.record()
    for i in range(generate - 1):
        token = runner.run([StepRow(kv, (token,), sampler, stop=StopRule(frozenset(), 1) if i == generate - 2 else None)])[0][-1]
    end.record()
    torch.cuda.synchronize()
    steps = generate - 1
    return prefill, (time.perf_counter() - started) / steps, begin.elapsed_time(end) / 1e3 / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=int, nargs="+", default=[0, 4800, 19200])
    parser.add_argument("--append", type=int, default=64)
    parser.add_argument("--generate", type=int, default=32)
    parser.add_argument("--turns", type=int, default=3, help="timed turns per history (the first is a warm-up)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--run-ahead", action="store_true", help="launch each decode step early, as the server does")
    parser.add_argument("--kv-dtype", choices=("auto", "fp8"), default="auto", help="slab dtype, as `kakeya serve --kv-dtype`")
    parser.add_argument("--variant", help="row kernel of decode rows (cuda_kernels.VARIANTS; default: the runtime's)")
    parser.add_argument("--no-cuda-kernels", action="store_true",
                        help="the Triton kernels only, not the runtime's CUDA C++ ones (cuda_nvrtc.ENABLED)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("measures the CUDA path: needs a CUDA device")
    if args.variant:
        from kakeya.runtime.cuda import attention as cuda_attention

        cuda_attention.ROW_VARIANT = args.variant
    if args.no_cuda_kernels:
        from kakeya.runtime.kernels import nvrtc as cuda_nvrtc

        cuda_nvrtc.ENABLED = False
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = SHAPES["qwen3-0.6b"]().to(device, dtype).eval()
    model.set_attn_implementation(ATTENTION_NAME)
    loaded = describe(model, model_id="qwen3-0.6b-random", device=device, dtype=dtype)
    kv_dtype = slab_dtype(args.kv_dtype, dtype, device, bounded=False)
    runner = ModelRunner(loaded, deterministic=False, run_ahead=args.run_ahead, kv_dtype=kv_dtype)
    shape = KVShape(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, kv_dtype, device)
    pool = KVPool(shape, 1 << 40, 256, 0, 0, 512)
    ids = torch.randint(3, loaded.vocab_size, (max(args.histories) + args.append * (args.turns + 1),)).tolist()
    results = []
    for history in args.histories:
        kv = pool.allocate()
        pool.reserve(kv, history + (args.append + args.generate) * (args.turns + 1))
        for start in range(0, history, 256):
            runner.run([StepRow(kv, tuple(ids[start:min(history, start + 256)]), None)])
        timings = []
        for _ in range(args.turns):
            kv.num_positions = history  # every turn appends the same chunk at the same place
            timings.append(turn(runner, kv, ids[history:history + args.append], args.generate))
        prefill = sorted(t[0] for t in timings[1:])[len(timings[1:]) // 2]
        decode = sorted(t[1] for t in timings[1:])[len(timings[1:]) // 2]
        gpu = sorted(t[2] for t in timings[1:])[len(timings[1:]) // 2]
        kv_bytes = history * shape.bytes_per_token
        results.append({"history": history, "append_step_ms": round(prefill * 1e3, 2),
                        "decode_step_ms": round(decode * 1e3, 3), "decode_step_gpu_ms": round(gpu * 1e3, 3),
                        "turn_ms": round((prefill + decode * (args.generate - 1)) * 1e3, 1),
                        "kv_gb": round(kv_bytes / 1e9, 2),
                        "decode_kv_tb_s": round(kv_bytes / max(1e-9, decode - results[0]["decode_step_ms"] / 1e3) / 1e12, 2)
                        if results else None})
        pool.free(kv)
    for point in results:
        point["vs_first"] = round(point["turn_ms"] / results[0]["turn_ms"], 2)
    print(json.dumps({"benchmark": "long_turn", "device_name": torch.cuda.get_device_name(), "dtype": args.dtype,
                      "kv_dtype": str(kv_dtype).removeprefix("torch."), "variant": args.variant or "default", "cuda_kernels": not args.no_cuda_kernels, "run_ahead": args.run_ahead, "append": args.append, "generate": args.generate, "torch": torch.__version__,
                      "note": "median of timed turns; turn_ms = append step + (generate - 1) decode steps; decode_step_gpu_ms: CUDA events around the decode steps (close to decode_step_ms: the GPU never waited for the host); decode_kv_tb_s: history K/V bytes over the decode step time added since the first history",
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
