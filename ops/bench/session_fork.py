"""Branching and moving a session against prefilling its history again; durable-session write cost.

Part 1, per history length: the time from "I want a branch of this session" to the branch's first
token, three ways, interleaved in each round: ForkSession then a 1-token Generate; ImportSession
of an export then a 1-token Generate; and the baseline, a new session that appends the same
history and generates 1 token (a full prefill). Export time is reported too.
Part 2: 16 concurrent agents (append, generate, repeat) on a runtime without and with
--session-dir, rounds interleaved; tokens generated per second of each.

Runs in-process on the embedded model over real gRPC (the SDK). Prints one JSON document.

    python ops/bench/session_fork.py --histories 1024 8100 --rounds 3
    python ops/bench/session_fork.py --model Qwen/Qwen3-0.6B --device cuda --dtype bfloat16 \
        --histories 1024 8192 32768 --kv-budget-gib 24

A history must fit the model's context: the embedded SmolLM2-135M holds 8192 tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time

import structlog
import torch

from kakeya import Client
from kakeya.runtime.common.config import EngineConfig, ModelConfig, RuntimeConfig, ServerConfig, SessionLimits
from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.engine.loader import load_model
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.server import RuntimeServer


async def start(loaded, session_dir: str | None, budget: int) -> tuple[RuntimeServer, str]:
    config = RuntimeConfig(engine=EngineConfig(kv_budget_bytes=budget),
                           limits=SessionLimits(session_dir=session_dir, max_sessions=64),
                           server=ServerConfig(host="127.0.0.1", port=0))
    server = RuntimeServer(config)
    address = await server.start()
    await server.attach(Host(config, loaded, on_engine_death=lambda exc: None))
    return server, address


async def _timed(awaitable) -> tuple[float, object]:
    started = time.perf_counter()
    result = await awaitable
    return time.perf_counter() - started, result


async def branch_round(client: Client, source, history: list[int], exported: bytes) -> dict[str, float]:
    """One of each: fork + first token, import + first token, and re-prefill + first token."""
    async def fork_first():
        branch = await source.fork()
        await branch.generate(1).collect()
        return branch

    async def import_first():
        moved = await client.import_session(exported)
        await moved.generate(1).collect()
        return moved

    async def reprefill_first():
        fresh = await client.create_session(initial_tokens=history, default_eos=False)
        await fresh.generate(1).collect()
        return fresh

    times = {}
    for name, make in (("fork", fork_first), ("import", import_first), ("reprefill", reprefill_first)):
        seconds, session = await _timed(make())
        times[name] = seconds
        await session.close()
    seconds, branch = await _timed(source.fork())  # the RPC alone
    times["fork_rpc"] = seconds
    await branch.close()
    return times


async def branches(address: str, history_tokens: int, rounds: int) -> dict:
    history = [(7 * i + 13) % 30000 + 100 for i in range(history_tokens)]
    async with Client(address, timeout_s=3600) as client:
        source = await client.create_session(initial_tokens=history, default_eos=False)
        history = history + await source.generate(1).collect()  # its last token is pending, as a turn leaves it
        info = await source.info()
        export_s, exported = await _timed(source.export())
        samples = [await branch_round(client, source, history, exported) for _ in range(rounds)]
        await source.close()
    medians = {name: statistics.median(s[name] for s in samples) for name in samples[0]}
    return {"history_tokens": info.history_length, "kv_bytes": info.kv_used_bytes, "export_bytes": len(exported),
            "export_s": round(export_s, 4), "median_s": {k: round(v, 4) for k, v in medians.items()},
            "samples": samples,
            "reprefill_over_fork": round(medians["reprefill"] / medians["fork"], 2),
            "reprefill_over_import": round(medians["reprefill"] / medians["import"], 2)}


async def agent(client: Client, turns: int, append: int, generate: int, seed: int) -> int:
    tokens = 0
    async with client.session(default_eos=False) as session:
        for turn in range(turns):
            await session.append([(seed * 31 + turn * 7 + i) % 30000 + 100 for i in range(append)])
            tokens += len(await session.generate(generate).collect())
    return tokens


async def agents_round(address: str, count: int, turns: int, append: int, generate: int) -> float:
    async with Client(address, timeout_s=3600) as client:
        started = time.perf_counter()
        made = await asyncio.gather(*(agent(client, turns, append, generate, i) for i in range(count)))
        return sum(made) / (time.perf_counter() - started)


async def run(args) -> dict:
    model = ModelConfig(model=args.model, device=args.device, dtype=args.dtype)
    loaded = await asyncio.to_thread(load_model, model, ATTENTION_NAME)
    too_long = [n for n in args.histories if n + 2 > loaded.max_context_tokens]
    if too_long:
        raise SystemExit(f"histories {too_long} exceed {loaded.model_id}'s context of {loaded.max_context_tokens}")
    budget = int(args.kv_budget_gib * 1024**3)
    result = {"device": str(loaded.device), "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "model": loaded.model_id, "dtype": str(loaded.dtype),
              "note": "shared, noisy CPU: the three ways are interleaved in every round", "branches": []}
    server, address = await start(loaded, None, budget)
    try:
        for tokens in args.histories:
            result["branches"].append(await branches(address, tokens, args.rounds))
            print(json.dumps(result["branches"][-1]), flush=True)
    finally:
        await server.stop(0)
    if args.agent_rounds:
        result["agents16"] = await agents(loaded, budget, args)
    return result


async def agents(loaded, budget: int, args) -> dict:
    with tempfile.TemporaryDirectory(dir=args.session_dir_parent) as directory:
        plain, plain_address = await start(loaded, None, budget // 2)
        durable, durable_address = await start(loaded, directory, budget // 2)
        try:
            rates = {"plain": [], "session_dir": []}
            for _ in range(args.agent_rounds):  # interleaved A/B rounds
                rates["plain"].append(await agents_round(plain_address, 16, args.turns, 32, 32))
                rates["session_dir"].append(await agents_round(durable_address, 16, args.turns, 32, 32))
        finally:
            await plain.stop(0)
            await durable.stop(0)
    medians = {k: statistics.median(v) for k, v in rates.items()}
    return {"turns": args.turns, "append": 32, "generate": 32, "tok_s": rates,
            "median_tok_s": {k: round(v, 1) for k, v in medians.items()},
            "session_dir_over_plain": round(medians["session_dir"] / medians["plain"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=int, nargs="*", default=[1024, 8100], help="none: skip part 1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--agent-rounds", type=int, default=3, help="0: skip part 2")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--model", default=None, help="as `kakeya serve --model` (default: the embedded model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kv-budget-gib", type=float, default=8.0, help="of the branch runtime; each agent runtime gets half")
    parser.add_argument("--session-dir-parent", default=None, help="where the durable run's directory is made")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    print(json.dumps(asyncio.run(run(args)), indent=1))


if __name__ == "__main__":
    main()
