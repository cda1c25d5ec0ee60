"""Aggregate decode throughput of N concurrent sessions over gRPC vs plain transformers `generate`.

The runtime is a `kakeya serve` process of its own; the baseline, in the same run, is the same N
sessions served one after another with `generate` (transformers' own sdpa attention and dynamic
cache) in this process. Prints one JSON document. On a shared machine the baseline alone moves by
20% between runs: `--rounds R` measures baseline and runtime R times, interleaved, against servers
started once, and reports medians.

    python ops/bench/decode_throughput.py --sessions 1 4 8 --prompt 128 --new 64 [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
import torch
from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc
from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.common.config import ModelConfig
from kakeya.runtime.server.log_setup import configure_logging
from kakeya.runtime.engine.loader import load_model


def prompts(count: int, length: int, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1234)
    return [torch.randint(100, vocab - 100, (length,), generator=generator).tolist() for _ in range(count)]


def baseline(model, batch: list[list[int]], new_tokens: int) -> tuple[float, float]:
    """Seconds to serve the sessions one after another with `generate`: (total, decode only).

    Decode time is the total less a max_new_tokens=1 run of the same prompts (prefill + first token).
    """
    def serve(count: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for prompt in batch:
                model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               max_new_tokens=count, min_new_tokens=count, do_sample=False, pad_token_id=0)
        return time.perf_counter() - started

    total = serve(new_tokens)
    return total, total - serve(1)


async def runtime_run(stub, batch: list[list[int]], new_tokens: int) -> dict[str, float]:
    """Serves all sessions concurrently. The decode phase starts when the last session has its
    first token (every session is decoding from then on) and ends with the last token."""
    stamps: list[list[float]] = []
    starts: list[float] = []

    async def one(prompt: list[int]) -> None:
        sid = (await stub.CreateSession(pb.CreateSessionRequest(no_default_eos=True))).session_id
        await stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=prompt))
        times: list[float] = []
        stamps.append(times)
        starts.append(time.perf_counter())
        async for response in stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=new_tokens)):
            if response.WhichOneof("payload") == "token_id":
                times.append(time.perf_counter())
        assert len(times) == new_tokens, f"expected {new_tokens} tokens, got {len(times)}"
        await stub.CloseSession(pb.CloseSessionRequest(session_id=sid))

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in batch))
    ended = max(t[-1] for t in stamps)
    decode_from = max(t[0] for t in stamps)
    decode_tokens = sum(1 for times in stamps for t in times if t > decode_from)
    ttfts = sorted(times[0] - began for times, began in zip(stamps, starts))
    return {"wall_s": ended - started, "decode_tok_s": decode_tokens / max(ended - decode_from, 1e-9),
            "ttft_p50_s": ttfts[len(ttfts) // 2]}


@contextlib.contextmanager
def served(deterministic: bool, env: dict[str, str] | None = None, engine_process: str | None = None):
    """A `kakeya serve` process of its own (as users run it), on a unix socket; yields its address.
    env: variables set for the server only (the baseline runs in this process); engine_process:
    its --engine-process (None: the default)."""
    with tempfile.TemporaryDirectory() as tmp:
        socket_path = os.path.join(tmp, "kakeya.sock")
        flag = "--deterministic" if deterministic else "--no-deterministic"
        extra = ["--engine-process", engine_process] if engine_process else []
        process = subprocess.Popen([sys.executable, "-m", "kakeya.runtime.server.cli", "serve", "--unix-socket", socket_path,
                                    flag, "--log-level", "warning", "--metrics-port", "-1", *extra],
                                   env={**os.environ, **(env or {})})
        address = f"unix:{socket_path}"
        try:
            wait_serving(address, process)
            yield address
        finally:
            process.terminate()
            process.wait(60)


def wait_serving(address: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"kakeya serve exited with {process.returncode}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise TimeoutError("kakeya serve did not become ready")


async def one_round(n: int, batch: list[list[int]], new_tokens: int, reference, stubs: dict, reverse: bool) -> dict:
    """The baseline, then each mode's runtime, back to back: every ratio is against the baseline
    measured next to it. Odd rounds run the modes in reverse order."""
    base_s, base_decode_s = baseline(reference, batch, new_tokens)
    row = {"baseline_generate_sequential_tok_s": round(n * new_tokens / base_s, 2),
           "baseline_generate_sequential_decode_tok_s": round(n * (new_tokens - 1) / base_decode_s, 2)}
    for mode in sorted(stubs, reverse=not reverse):
        measured = await runtime_run(stubs[mode], batch, new_tokens)
        deterministic, engine_process = mode
        key = ("deterministic" if deterministic else "fast") + (f"_engine_process_{engine_process}"
                                                                 if engine_process else "")
        row[f"kakeya_{key}_tok_s"] = round(n * new_tokens / measured["wall_s"], 2)
        row[f"kakeya_{key}_ratio_vs_baseline"] = round(base_s / measured["wall_s"], 2)
        row[f"kakeya_{key}_decode_tok_s"] = round(measured["decode_tok_s"], 2)
        row[f"kakeya_{key}_decode_ratio_vs_baseline"] = round(
            measured["decode_tok_s"] / row["baseline_generate_sequential_decode_tok_s"], 2)
        row[f"kakeya_{key}_ttft_p50_s"] = round(measured["ttft_p50_s"], 3)
    return row


def summarise(n: int, rounds: list[dict]) -> dict:
    """Each figure's median over the rounds (the round itself when there is one), and every round."""
    summary = {"sessions": n, **{key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]}}
    if len(rounds) > 1:
        summary["rounds"] = rounds
    return summary


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--deterministic", choices=("on", "off", "both"), default="both")
    parser.add_argument("--engine-process", choices=("on", "off", "both"), default=None,
                        help="the servers' --engine-process (both: one server of each, interleaved); default: theirs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure baseline and runtime this many times, interleaved; figures are medians")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the kakeya server only, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)")
    args = parser.parse_args()
    server_env = dict(item.split("=", 1) for item in args.server_env)
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_logging("console", "warning")
    loaded = load_model(ModelConfig(), ATTENTION_NAME)
    reference = copy.deepcopy(loaded.model)
    reference.set_attn_implementation("sdpa")
    deterministic_modes = {"on": [True], "off": [False], "both": [True, False]}[args.deterministic]
    process_modes = {None: [""], "on": ["on"], "off": ["off"], "both": ["on", "off"]}[args.engine_process]
    modes = [(d, p) for d in deterministic_modes for p in process_modes]
    results = []
    for n in args.sessions:
        batch = prompts(n, args.prompt, loaded.vocab_size)
        async with contextlib.AsyncExitStack() as servers:
            stubs = {}
            for mode in modes:
                address = servers.enter_context(served(mode[0], server_env, mode[1]))
                channel = await servers.enter_async_context(grpc.aio.insecure_channel(address))
                stubs[mode] = runtime_pb2_grpc.RuntimeServiceStub(channel)
                await runtime_run(stubs[mode], batch[:1], 4)  # warm-up
            rounds = [await one_round(n, batch, args.new, reference, stubs, reverse=r % 2 == 1)
                      for r in range(args.rounds)]
        results.append(summarise(n, rounds))
    print(json.dumps({
        "benchmark": "decode_throughput",
        "model": loaded.model_id, "device": str(loaded.device), "dtype": str(loaded.dtype),
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "prompt_tokens": args.prompt, "new_tokens": args.new, "server_env": server_env,
        "rounds": args.rounds,
        "note": ("tok_s: generated tokens over wall time including prefill, both sides; decode_tok_s: "
                 "tokens while every session decodes (kakeya) vs generate's time less its prefill+first token; "
                 "with rounds > 1 each figure is the median over rounds, each round's ratios against its own baseline"),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
