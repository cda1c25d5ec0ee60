"""Engine-level decode benchmark on any device, with a random-weight model of a real shape.

Measures the batched engine (ModelRunner over per-session KV slabs) against transformers
`generate` on a batch of the same N sequences (dynamic cache, sdpa), in the same run, and checks
that batched greedy tokens equal each session decoded alone. Prints one JSON document.

    python ops/bench/engine_step.py --device cuda --dtype bfloat16 --sessions 1 8 32 64
    python ops/bench/engine_step.py --shape smollm2-135m --device cpu --sessions 1 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import structlog
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.forward.session_kv import KVShape
from kakeya.runtime.engine.loader import describe
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.step import StepRow
from kakeya.runtime.engine.sampler import Sampler, SamplingParams

SHAPES = {
    "qwen3-0.6b": lambda: Qwen3ForCausalLM(Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        tie_word_embeddings=True)),
    "smollm2-135m": lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True)),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


_RUNNERS: dict[tuple[bool, bool], ModelRunner] = {}


def engine_decode(loaded, prompts, new_tokens, deterministic, fusion=True, packed=True):
    """(decode seconds per step, tokens per session) for all prompts decoded together."""
    shape = KVShape(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, loaded.dtype, loaded.device)
    pool = KVPool(shape, 1 << 40, 256, 0, 0, 512)
    # One runner per mode: on CUDA it keeps the graphs captured by the warm-up.
    runner = _RUNNERS.get((deterministic, fusion))
    if runner is None:
        runner = _RUNNERS[deterministic, fusion] = ModelRunner(loaded, deterministic, cuda_fusion=fusion,
                                                                  cpu_packed_linears=packed)
    slabs = [pool.allocate() for _ in prompts]
    for kv, prompt in zip(slabs, prompts):
        pool.reserve(kv, len(prompt) + new_tokens)
    samplers = [Sampler(SamplingParams()) for _ in prompts]
    tokens = runner.run([StepRow(kv, tuple(p), s) for kv, p, s in zip(slabs, prompts, samplers)])
    streams = [list(t) for t in tokens]
    sync(loaded.device)
    started = time.perf_counter()
    for _ in range(new_tokens - 1):
        tokens = runner.run([StepRow(kv, (s[-1],), g) for kv, s, g in zip(slabs, streams, samplers)])
        for stream, emitted in zip(streams, tokens):
            stream.extend(emitted)
    sync(loaded.device)
    return (time.perf_counter() - started) / (new_tokens - 1), streams


def generate_decode(model, prompts, new_tokens, device):
    """Seconds per decode step of `generate` on the whole batch (prefill subtracted)."""
    ids = torch.tensor(prompts, device=device)

    def run(count):
        sync(device)
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=count, min_new_tokens=count,
                           do_sample=False, pad_token_id=0)
        sync(device)
        return time.perf_counter() - started

    run(2)  # warm-up
    return (run(new_tokens) - run(1)) / (new_tokens - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-0.6b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--no-cuda-fusion", action="store_true",
                        help="transformers' modules instead of the fused decoder (for comparison)")
    parser.add_argument("--no-cpu-packed-linears", action="store_true",
                        help="plain linears instead of MKL-packed weights on CPU (for comparison)")
    parser.add_argument("--check-sessions", type=int, default=4, help="sessions in the batched-vs-alone check")
    args = parser.parse_args()
    fusion, packed = not args.no_cuda_fusion, not args.no_cpu_packed_linears
    # The JSON document owns stdout; the engine's log lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    reference = SHAPES[args.shape]().to(device=device, dtype=dtype).eval()
    reference.set_attn_implementation("sdpa")
    engine_model = SHAPES[args.shape]().to(device=device, dtype=dtype).eval()
    engine_model.load_state_dict(reference.state_dict())
    engine_model.set_attn_implementation(ATTENTION_NAME)
    loaded = describe(engine_model, args.shape, device, dtype)
    generator = torch.Generator().manual_seed(7)
    vocab = loaded.vocab_size
    results = []
    for n in args.sessions:
        prompts = [torch.randint(10, vocab - 10, (args.prompt,), generator=generator).tolist() for _ in range(n)]
        row = {"sessions": n}
        for deterministic in (False, True):
            engine_decode(loaded, prompts, 4, deterministic, fusion, packed)  # warm-up, graph capture included
            step_s, _ = engine_decode(loaded, prompts, args.new, deterministic, fusion, packed)
            key = "deterministic" if deterministic else "fast"
            row[f"kakeya_{key}_step_ms"] = round(step_s * 1000, 3)
            row[f"kakeya_{key}_tok_s"] = round(n / step_s, 1)
        base_s = generate_decode(reference, prompts, args.new, device)
        row["generate_batch_dynamic_step_ms"] = round(base_s * 1000, 3)
        row["generate_batch_dynamic_tok_s"] = round(n / base_s, 1)
        row["fast_ratio_vs_generate"] = round(base_s / (row["kakeya_fast_step_ms"] / 1000), 2)
        results.append(row)
    check = [torch.randint(10, vocab - 10, (24 + 9 * i,), generator=generator).tolist()
             for i in range(args.check_sessions)]
    identical = {}
    for deterministic in (False, True):
        _, together = engine_decode(loaded, check, 32, deterministic, fusion, packed)
        alone = [engine_decode(loaded, [p], 32, deterministic, fusion, packed)[1][0] for p in check]
        identical["deterministic" if deterministic else "fast"] = sum(a == b for a, b in zip(together, alone))
    print(json.dumps({
        "benchmark": "engine_step", "shape": args.shape, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype, "cuda_fusion": fusion, "cpu_packed_linears": packed, "torch": torch.__version__, "prompt_tokens": args.prompt, "new_tokens": args.new,
        "note": "decode-phase step time; random weights (throughput depends only on shapes)",
        "results": results,
        "batched_equals_alone": {k: f"{v}/{len(check)} sessions" for k, v in identical.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
