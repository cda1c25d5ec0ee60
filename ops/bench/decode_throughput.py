"""Aggregate decode throughput of N concurrent sessions over gRPC vs plain transformers `generate`.

Baseline, in the same run: the same N sessions served one after another with `generate`
(transformers' own sdpa attention and dynamic cache). Prints one JSON document.

    python ops/bench/decode_throughput.py --sessions 1 4 8 --prompt 128 --new 64
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import json
import platform
import time

import grpc
import torch

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc
from kakeya.runtime.attention import ATTENTION_NAME
from kakeya.runtime.config import EngineConfig, ModelConfig, RuntimeConfig, ServerConfig
from kakeya.runtime.model_loader import load_model
from kakeya.runtime.runtime import Runtime
from kakeya.runtime.server import RuntimeServer


def prompts(count: int, length: int, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1234)
    return [torch.randint(100, vocab - 100, (length,), generator=generator).tolist() for _ in range(count)]


def baseline(model, batch: list[list[int]], new_tokens: int) -> float:
    """Seconds to serve the sessions one after another with `generate`."""
    started = time.perf_counter()
    with torch.inference_mode():
        for prompt in batch:
            model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return time.perf_counter() - started


async def runtime_run(stub, batch: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
    """Seconds for all sessions to finish concurrently, and each session's time to first token."""
    ttfts: list[float] = []

    async def one(prompt: list[int]) -> None:
        sid = (await stub.CreateSession(pb.CreateSessionRequest())).session_id
        await stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=prompt))
        began = time.perf_counter()
        count = 0
        async for response in stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=new_tokens)):
            if response.WhichOneof("payload") == "token_id":
                count += 1
                if count == 1:
                    ttfts.append(time.perf_counter() - began)
        assert count == new_tokens, f"expected {new_tokens} tokens, got {count}"
        await stub.CloseSession(pb.CloseSessionRequest(session_id=sid))

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in batch))
    return time.perf_counter() - started, ttfts


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--deterministic", choices=("on", "off", "both"), default="both")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(ModelConfig(), ATTENTION_NAME)
    reference = copy.deepcopy(loaded.model)
    reference.set_attn_implementation("sdpa")
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.deterministic]
    results = []
    for n in args.sessions:
        batch = prompts(n, args.prompt, loaded.vocab_size)
        base_s = baseline(reference, batch, args.new)
        row = {"sessions": n, "baseline_generate_sequential_tok_s": round(n * args.new / base_s, 2)}
        for deterministic in modes:
            config = RuntimeConfig(model=ModelConfig(), server=ServerConfig(port=0),
                                   engine=dataclasses.replace(EngineConfig(), deterministic=deterministic))
            server = RuntimeServer(config)
            address = await server.start()
            await server.attach(Runtime(config, loaded))
            async with grpc.aio.insecure_channel(address) as channel:
                stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
                await runtime_run(stub, batch[:1], 4)  # warm-up
                wall_s, ttfts = await runtime_run(stub, batch, args.new)
            await server.stop(0)
            key = "deterministic" if deterministic else "fast"
            row[f"kakeya_{key}_tok_s"] = round(n * args.new / wall_s, 2)
            row[f"kakeya_{key}_ratio_vs_baseline"] = round(base_s / wall_s, 2)
            row[f"kakeya_{key}_ttft_p50_s"] = round(sorted(ttfts)[len(ttfts) // 2], 3)
        results.append(row)
    print(json.dumps({
        "benchmark": "decode_throughput",
        "model": loaded.model_id, "device": str(loaded.device), "dtype": str(loaded.dtype),
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "prompt_tokens": args.prompt, "new_tokens": args.new,
        "note": "tok/s counts generated tokens over wall time including prefill, for both sides",
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
