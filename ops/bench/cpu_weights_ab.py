"""Quantized CPU linears (--cpu-weights int8 / int4) against the fp32 path, interleaved, same run.

Every runner holds the embedded Q4_1 GGUF model: the baseline as loaded (dequantized to fp32, MKL-
packed, CPU decoder), the others with their linears held in each format (same decoder). For 1 and
for N sessions each decodes in turns of S steps, the order of the runners reversed every round,
for R rounds; medians of step time, tokens per second and each format's speedup over fp32 are
printed as one JSON document. Then each format's effect on greedy output: G prompts decoded T
tokens by it and by fp32, compared position by position; and deterministic mode's promise for it:
a session's stream alone equals its stream among others.

    python ops/bench/cpu_weights_ab.py --sessions 8 --rounds 8 --agreement-prompts 20 --agreement-tokens 128 [--deterministic]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys

import structlog
import torch

from cpu_decoder_ab import Sessions
from kakeya.runtime.common.config import ModelConfig
from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.engine.loader import load_model
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.forward.session_kv import KVShape


def prompts_of(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(100, vocab - 100, (length,), generator=generator).tolist() for _ in range(count)]


def throughput(runners: dict, pool: KVPool, prompts: list[list[int]], rounds: int, steps: int) -> dict:
    room = 2 * rounds * (steps + 1) + 8
    sessions = {name: Sessions(runner, pool, prompts, room) for name, runner in runners.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for index in range(rounds):
        for name in (list(sessions) if index % 2 == 0 else list(reversed(sessions))):
            sessions[name].step()  # one untimed step after the switch
            times[name].append(sessions[name].timed(steps))
    for group in sessions.values():
        for kv in group.kvs:
            pool.free(kv)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"sessions": len(prompts),
            "tok_s_median": {name: round(len(prompts) / value, 2) for name, value in medians.items()},
            "step_ms_rounds": {name: [round(v * 1000, 1) for v in values] for name, values in times.items()},
            "speedup_vs_fp32": {name: round(medians["fp32"] / value, 3) for name, value in medians.items()
                                if name != "fp32"}}


def streams(runner: ModelRunner, pool: KVPool, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    group = Sessions(runner, pool, prompts, tokens + 8)
    while len(group.streams[0]) < tokens:
        group.step()
    for kv in group.kvs:
        pool.free(kv)
    return [s[:tokens] for s in group.streams]


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    firsts = [next((i for i, (x, y) in enumerate(zip(s, t)) if x != y), len(s)) for s, t in zip(a, b)]
    same = sum(x == y for s, t in zip(a, b) for x, y in zip(s, t))
    return {"prompts": len(a), "tokens": len(a[0]), "identical_streams": sum(f == len(a[0]) for f in firsts),
            "tokens_equal_fraction": round(same / sum(map(len, a)), 4),
            "first_divergence_median": statistics.median(firsts)}


def alone_equals_batched(loaded, fmt: str, pool: KVPool, prompts: list[list[int]]) -> bool:
    runner = ModelRunner(loaded, True, cpu_weights=fmt)
    runner.warm_up(0)
    together = streams(runner, pool, prompts[:4], 32)
    same = [streams(runner, pool, [p], 32)[0] for p in prompts[:2]] == together[:2]
    runner.shutdown()
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--formats", default="int8,int4", help="held formats to compare with fp32")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--agreement-prompts", type=int, default=20)
    parser.add_argument("--agreement-tokens", type=int, default=128)
    parser.add_argument("--deterministic", action="store_true", help="every runner in deterministic mode")
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    torch.set_num_threads(args.threads)
    fp32 = load_model(ModelConfig(device="cpu", dtype="float32"), ATTENTION_NAME)
    formats = args.formats.split(",")
    models = {"fp32": fp32} | {fmt: dataclasses.replace(fp32, model=copy.deepcopy(fp32.model)) for fmt in formats}
    shape = KVShape(fp32.num_layers, fp32.num_kv_heads, fp32.head_dim, fp32.dtype, fp32.device)
    pool = KVPool(shape, 1 << 40, 256, 0, 0, 512)
    det = args.deterministic
    runners = {name: ModelRunner(loaded, det, cpu_weights="float32" if name == "fp32" else name)
               for name, loaded in models.items()}
    for runner in runners.values():
        runner.warm_up(0)
    result = {"benchmark": "cpu_weights_ab", "model": fp32.model_id, "weights_origin": fp32.weights_origin,
              "held_as": {name: r.paths()["weights_held_as"] for name, r in runners.items()},
              "forward_path": {name: r.paths()["forward_path"] for name, r in runners.items()},
              "prompt_tokens": args.prompt, "threads": args.threads, "rounds": args.rounds,
              "steps_per_round": args.steps, "machine": os.uname().machine, "deterministic": det,
              "load_average_before": os.getloadavg()[0]}
    result["throughput"] = [throughput(runners, pool, prompts_of(n, args.prompt, fp32.vocab_size, 1234), args.rounds,
                                       args.steps) for n in (1, args.sessions)]
    prompts = prompts_of(args.agreement_prompts, 32, fp32.vocab_size, 99)
    baseline = streams(runners["fp32"], pool, prompts, args.agreement_tokens)
    result["greedy_agreement_vs_fp32"] = {fmt: agreement(baseline, streams(runners[fmt], pool, prompts,
                                                                           args.agreement_tokens)) for fmt in formats}
    for runner in runners.values():
        runner.shutdown()
    result["deterministic_alone_equals_batched"] = {fmt: alone_equals_batched(models[fmt], fmt, pool, prompts)
                                                    for fmt in formats}
    result["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
