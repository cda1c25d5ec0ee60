"""Deterministic CPU steps of this checkout against another checkout's, interleaved in one process.

One model, one runner; "old" swaps in the other checkout's CPU decoder, cpu_linear and
plan_group, and turns off what this checkout adds around them (step_views, the step's single
argmax). Each round times both on 8 sessions' decode steps (prompt P, S steps after an untimed
one) and on a fresh prefill of all 8 prompts, alternating which goes first. Prints one JSON
document: medians of step time, the median of paired per-round ratios, and whether both produce
bitwise the same logits from the same state. On a shared machine the absolute times move by 20%
from minute to minute; only the interleaved ratios mean much.

    python ops/bench/cpu_step_ab.py --old /path/to/baseline/checkout --rounds 30 --prefill-rounds 10
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import structlog
import torch

sys.path.insert(0, str(Path(__file__).parent))
from cpu_decoder_ab import Sessions  # noqa: E402

from kakeya.runtime.cpu import plan as cpu_attention  # noqa: E402
from kakeya.runtime.engine import runner as model_runner  # noqa: E402
from kakeya.runtime.engine.attention_hook import ATTENTION_NAME  # noqa: E402
from kakeya.runtime.common.config import ModelConfig  # noqa: E402
from kakeya.runtime.engine.kv_pool import KVPool  # noqa: E402
from kakeya.runtime.forward.session_kv import KVShape  # noqa: E402
from kakeya.runtime.engine.loader import load_model  # noqa: E402
from kakeya.runtime.engine.runner import ModelRunner  # noqa: E402
from kakeya.runtime.engine.step import StepRow
from kakeya.runtime.engine.sampler import Sampler, SamplingParams  # noqa: E402


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(f"kakeya.runtime.{name}_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Switch:
    def __init__(self, old_root: Path, runner: ModelRunner) -> None:
        linear = _load("cpu_linear", old_root / "runtime/cpu_linear.py")
        decoder = _load("cpu_decoder", old_root / "runtime/cpu_decoder.py")
        decoder.cpu_linear = linear
        self.runner = runner
        self.plan = {"new": model_runner.plan_group, "old": _load("cpu_attention", old_root / "runtime/cpu_attention.py").plan_group}
        self.decoder = {"new": runner.cpu_decoder, "old": decoder.CpuDecoder(runner.loaded.model, runner.packed)}
        self.views = {"new": cpu_attention.step_views, "old": lambda *_: None}
        self.logits = {"new": model_runner.as_step_logits, "old": lambda logits: logits}

    def use(self, name: str) -> None:
        model_runner.plan_group, model_runner.step_views = self.plan[name], self.views[name]
        model_runner.as_step_logits = self.logits[name]
        self.runner.cpu_decoder = self.decoder[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="root of the baseline checkout")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="timed decode steps per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--prefill-rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    torch.set_num_threads(args.threads)
    loaded = load_model(ModelConfig(device="cpu", dtype="float32"), ATTENTION_NAME)
    shape = KVShape(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, loaded.dtype, loaded.device)
    pool = KVPool(shape, 1 << 40, 256, 0, 0, 512)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(100, 40000, (args.prompt,), generator=generator).tolist() for _ in range(args.sessions)]
    runner = ModelRunner(loaded, True, cpu_decoder=True)
    runner.warm_up(0)
    switch = Switch(args.old, runner)
    sessions = {}
    for name in ("old", "new"):
        switch.use(name)
        sessions[name] = Sessions(runner, pool, prompts, 2 * args.rounds * (args.steps + 1) + 8)

    def next_logits(name: str) -> torch.Tensor:
        switch.use(name)
        s = sessions[name]
        marks = [kv.num_positions for kv in s.kvs]
        logits = runner.feed(s.items())
        for kv, mark in zip(s.kvs, marks):
            kv.num_positions = mark
        return logits

    def prefill(name: str) -> tuple[float, torch.Tensor]:
        switch.use(name)
        kvs = [pool.allocate() for _ in prompts]
        for kv, p in zip(kvs, prompts):
            pool.reserve(kv, len(p) + 8)
        started = time.perf_counter()
        logits = runner.feed([StepRow(kv, tuple(p), Sampler(SamplingParams())) for kv, p in zip(kvs, prompts)])
        elapsed = time.perf_counter() - started
        for kv in kvs:
            pool.free(kv)
        return elapsed * 1e3, logits

    def decode(name: str) -> float:
        switch.use(name)
        sessions[name].step()  # untimed, after the switch
        return sessions[name].timed(args.steps) * 1e3

    report = {"benchmark": "cpu_step_ab", "old": str(args.old), "sessions": args.sessions,
              "prompt_tokens": args.prompt, "threads": args.threads, "rounds": args.rounds,
              "steps_per_round": args.steps, "prefill_rounds": args.prefill_rounds,
              "bitwise_decode_logits": torch.equal(next_logits("old"), next_logits("new")),
              "bitwise_prefill_logits": torch.equal(prefill("old")[1], prefill("new")[1])}
    times = {kind: {"old": [], "new": []} for kind in ("decode", "prefill")}
    for index in range(max(args.rounds, args.prefill_rounds)):
        order = ("old", "new") if index % 2 == 0 else ("new", "old")
        if index < args.rounds:
            for name in order:
                times["decode"][name].append(decode(name))
        if index < args.prefill_rounds:
            for name in reversed(order):
                times["prefill"][name].append(prefill(name)[0])
    for kind, runs in times.items():
        old, new = runs["old"], runs["new"]
        if not old:
            continue
        report[f"{kind}_ms_median"] = {"old": round(statistics.median(old), 2), "new": round(statistics.median(new), 2)}
        report[f"{kind}_speedup_of_medians"] = round(statistics.median(old) / statistics.median(new), 3)
        report[f"{kind}_median_paired_ratio"] = round(statistics.median(o / n for o, n in zip(old, new)), 3)
        report[f"{kind}_ms_rounds"] = {name: [round(v, 1) for v in values] for name, values in runs.items()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
