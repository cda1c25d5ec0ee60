"""Aggregate tok/s of N concurrent streaming chat clients over the OpenAI-compatible HTTP API
against the same N clients over gRPC, same run, same server.

HTTP clients are the `openai` package's AsyncOpenAI, streaming /v1/chat/completions; gRPC clients
are the SDK's `kakeya.Client`, streaming generate from the same prompts rendered with the model's
chat template (what the HTTP API prefills). Greedy, `max_tokens` each. Over gRPC sessions are
opened with `default_eos=False`, so every reply runs to max_tokens; the HTTP API has no way to opt
out of EOS, so each side's tok/s counts the tokens it actually generated (HTTP: `usage` of the
stream). One in-process server serves both (HTTP resident sessions off, so that both sides open,
prefill and close a session per request); rounds are interleaved (gRPC, HTTP, HTTP, gRPC, ...)
and figures are medians. Prints one JSON document.

    python ops/bench/http_concurrent.py --clients 16 --max-tokens 32 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time

import openai
import structlog
import torch

import kakeya
from kakeya.runtime.common.config import EngineConfig, HttpConfig, ModelConfig, RuntimeConfig, ServerConfig
from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.engine.loader import load_model
from kakeya.runtime.http.template import ChatTemplate
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.server import RuntimeServer
from kakeya.tokenizer import load_tokenizer

TOPICS = ("rivers", "volcanoes", "bridges", "owls", "glaciers", "deserts", "comets", "forests",
          "lighthouses", "bees", "tides", "caves", "coral reefs", "thunderstorms", "trains", "mountains")


def conversations(count: int) -> list[list[dict]]:
    """One distinct request a client, each asking for a long answer (EOS unlikely within max_tokens)."""
    return [[{"role": "user", "content": f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]} "
                                         f"(essay {i + 1}), with many facts and examples."}] for i in range(count)]


async def grpc_client(client: kakeya.Client, prompt: list[int], max_tokens: int, started: float) -> dict:
    session = await client.create_session(default_eos=False, initial_tokens=prompt)
    tokens, first = [], None
    try:
        async for token in session.generate(max_tokens):
            first = first or time.perf_counter()
            tokens.append(token)
    finally:
        await session.close()
    return {"tokens": len(tokens), "ttft_s": first - started, "end": time.perf_counter(), "ids": tokens}


async def http_client(client: openai.AsyncOpenAI, messages: list[dict], max_tokens: int, started: float) -> dict:
    stream = await client.chat.completions.create(model="any", messages=messages, max_tokens=max_tokens,
                                                  temperature=0, stream=True,
                                                  stream_options={"include_usage": True})
    text, first, tokens = [], None, None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    assert tokens is not None, "the stream ended without usage"
    return {"tokens": tokens, "ttft_s": first - started, "end": time.perf_counter(), "text": "".join(text)}


async def measure(side: str, clients: dict, requests: dict, max_tokens: int) -> dict:
    """All clients of one side at once; tok/s is their generated tokens over the wall time from the
    first request to the last token (prefill included)."""
    started = time.perf_counter()
    if side == "grpc":
        jobs = [grpc_client(clients["grpc"], p, max_tokens, started) for p in requests["grpc"]]
    else:
        jobs = [http_client(clients["http"], m, max_tokens, started) for m in requests["http"]]
    replies = await asyncio.gather(*jobs)
    wall = max(r["end"] for r in replies) - started
    tokens = sum(r["tokens"] for r in replies)
    return {"tok_s": round(tokens / wall, 2), "tokens": tokens, "wall_s": round(wall, 3),
            "ttft_p50_s": round(statistics.median(r["ttft_s"] for r in replies), 3),
            "short_replies": sum(r["tokens"] < max_tokens for r in replies), "replies": replies}


def same_replies(grpc: dict, http: dict, tokenizer) -> int:
    """Clients whose HTTP text is the gRPC tokens decoded, over the common length (HTTP may stop at EOS)."""
    same = 0
    for g, h in zip(grpc["replies"], http["replies"]):
        text = tokenizer.decode(g["ids"][:h["tokens"]], skip_special_tokens=True)
        same += text.strip() == h["text"].strip()
    return same


async def rounds(args: argparse.Namespace, clients: dict, requests: dict, tokenizer) -> list[dict]:
    """Round r runs gRPC then HTTP when r is even, HTTP then gRPC when odd."""
    out = []
    for r in range(args.rounds):
        order = ("grpc", "http") if r % 2 == 0 else ("http", "grpc")
        row = {side: await measure(side, clients, requests, args.max_tokens) for side in order}
        row["same_replies"] = same_replies(row["grpc"], row["http"], tokenizer)
        for side in order:
            row[side].pop("replies")
        row["order"] = list(order)
        row["http_over_grpc"] = round(row["http"]["tok_s"] / row["grpc"]["tok_s"], 3)
        out.append(row)
    return out


async def serve_and_measure(args: argparse.Namespace, loaded, tokenizer) -> list[dict]:
    config = RuntimeConfig(engine=EngineConfig(kv_budget_bytes=2 * 1024**3), server=ServerConfig(port=0),
                           http=HttpConfig(port=0, reuse_sessions=False))
    server = RuntimeServer(config)
    server.http.use_tokenizer(tokenizer)
    address = await server.start()
    await server.attach(Host(config, loaded, on_engine_death=lambda exc: None))
    messages = conversations(args.clients)
    template = ChatTemplate(tokenizer)
    requests = {"http": messages, "grpc": [template.prompt_ids(m) for m in messages]}
    clients = {"grpc": kakeya.Client(address, timeout_s=600),
               "http": openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.http.port}/v1", api_key="none",
                                          max_retries=0, timeout=600)}
    try:
        for side in ("grpc", "http"):  # warm-up
            await measure(side, clients, {k: v[:2] for k, v in requests.items()}, 4)
        return await rounds(args, clients, requests, tokenizer)
    finally:
        await clients["http"].close()
        await clients["grpc"].close()
        await server.stop(0)


async def run(args: argparse.Namespace) -> dict:
    loaded = await asyncio.to_thread(load_model, ModelConfig(model=args.model), ATTENTION_NAME)
    tokenizer = await asyncio.to_thread(load_tokenizer, args.model)
    measured = await serve_and_measure(args, loaded, tokenizer)
    median = {f"{side}_{key}": round(statistics.median(r[side][key] for r in measured), 3)
              for side in ("http", "grpc") for key in ("tok_s", "tokens", "ttft_p50_s")}
    return {
        "benchmark": "http_concurrent", "model": loaded.model_id, "device": str(loaded.device),
        "torch_threads": torch.get_num_threads(), "clients": args.clients, "max_tokens": args.max_tokens,
        "rounds": args.rounds, **median, "same_replies_min": min(r["same_replies"] for r in measured),
        "http_over_grpc": round(statistics.median(r["http_over_grpc"] for r in measured), 3),
        "note": ("tok_s: tokens generated by all clients over the wall time from the first request to the "
                 "last token, prefill included; HTTP tokens from each stream's usage (EOS cannot be opted out "
                 "over HTTP), gRPC sessions with default_eos=False; same_replies: clients whose HTTP text is "
                 "the gRPC tokens decoded; clients and server share one process and event loop; medians over "
                 "interleaved rounds, http_over_grpc the median of each round's ratio"),
        "per_round": measured,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved: gRPC, HTTP, HTTP, gRPC, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--model", default=None, help="as `kakeya serve --model` (default: the embedded one)")
    parser.add_argument("--notes", default="", help="added to the JSON (e.g. what else ran on the machine)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = asyncio.run(run(args))
    if args.notes:
        result["notes"] = args.notes
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
