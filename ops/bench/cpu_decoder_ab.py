"""The CPU decoder (runtime/cpu/decoder.py) against transformers' modules, interleaved, same model.

Two runners share one model and its packed linears: one calls the ops directly, the baseline
runs transformers' forward. Each decodes N sessions (prompt P) in turns of S steps, alternating
which goes first, for R rounds; the medians of step time and their ratio are printed as one JSON
document, with a check that both produce bitwise the same logits from the same state. On a
shared machine the absolute times move by 20% from minute to minute; interleaving keeps the
ratio honest.

    python ops/bench/cpu_decoder_ab.py --sessions 8 --rounds 8 [--deterministic]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import structlog
import torch

from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.common.config import ModelConfig
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.forward.session_kv import KVShape
from kakeya.runtime.engine.loader import load_model
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.step import StepRow
from kakeya.runtime.engine.sampler import Sampler, SamplingParams


class Sessions:
    """N sessions of one runner, decoding greedily in lockstep."""

    def __init__(self, runner: ModelRunner, pool: KVPool, prompts: list[list[int]], room: int) -> None:
        self.runner = runner
        self.kvs = [pool.allocate() for _ in prompts]
        for kv, p in zip(self.kvs, prompts):
            pool.reserve(kv, len(p) + room)
        self.samplers = [Sampler(SamplingParams()) for _ in prompts]
        first = runner.run([StepRow(kv, tuple(p), s) for kv, p, s in zip(self.kvs, prompts, self.samplers)])
        self.streams = [list(t) for t in first]

    def items(self) -> list[StepRow]:
        return [StepRow(kv, (s[-1],), g) for kv, s, g in zip(self.kvs, self.streams, self.samplers)]

    def step(self) -> None:
        for stream, emitted in zip(self.streams, self.runner.run(self.items())):
            stream.extend(emitted)

    def timed(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - started) / steps


def same_logits(a: Sessions, b: Sessions) -> bool:
    """Both runners' next forward from identical histories, compared bit for bit (KV untouched:
    the positions are put back, and the rows written past them are overwritten by the next step)."""
    if [s[-1] for s in a.streams] != [s[-1] for s in b.streams]:
        return False
    marks = [[kv.num_positions for kv in x.kvs] for x in (a, b)]
    logits = [x.runner.feed(x.items()) for x in (a, b)]
    for x, positions in zip((a, b), marks):
        for kv, position in zip(x.kvs, positions):
            kv.num_positions = position
    return torch.equal(logits[0], logits[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="decode steps per timed turn")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--deterministic", action="store_true")
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    torch.set_num_threads(args.threads)
    loaded = load_model(ModelConfig(device="cpu", dtype="float32"), ATTENTION_NAME)
    shape = KVShape(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, loaded.dtype, loaded.device)
    room = 2 * args.rounds * (args.steps + 1) + 8
    pool = KVPool(shape, 1 << 40, 256, 0, 0, 512)
    generator = torch.Generator().manual_seed(1234)
    prompts = [torch.randint(100, loaded.vocab_size - 100, (args.prompt,), generator=generator).tolist()
               for _ in range(args.sessions)]
    runners = {name: ModelRunner(loaded, args.deterministic, cpu_decoder=name == "decoder")
               for name in ("decoder", "transformers")}
    for runner in runners.values():
        runner.warm_up(0)
    if runners["decoder"].cpu_decoder is None:
        raise SystemExit("the CPU decoder is not available here (needs MKL packed linears and a Llama-family model)")
    sessions = {name: Sessions(runner, pool, prompts, room) for name, runner in runners.items()}
    bitwise = same_logits(sessions["decoder"], sessions["transformers"])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for index in range(args.rounds):
        order = list(sessions) if index % 2 == 0 else list(reversed(sessions))
        for name in order:
            sessions[name].step()  # one untimed step after the switch
            times[name].append(sessions[name].timed(args.steps))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({
        "benchmark": "cpu_decoder_ab", "model": loaded.model_id, "sessions": args.sessions,
        "prompt_tokens": args.prompt, "deterministic": args.deterministic, "threads": args.threads,
        "rounds": args.rounds, "steps_per_round": args.steps, "machine": os.uname().machine,
        "bitwise_equal_logits": bitwise,
        "step_ms_median": {name: round(value * 1000, 2) for name, value in medians.items()},
        "step_ms_rounds": {name: [round(v * 1000, 2) for v in values] for name, values in times.items()},
        "decoder_speedup": round(medians["transformers"] / medians["decoder"], 3),
    }, indent=2))
    for runner in runners.values():
        runner.shutdown()


if __name__ == "__main__":
    main()
