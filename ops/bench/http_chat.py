"""Turn latency of a long chat through the OpenAI-compatible HTTP API, with resident sessions and
without (the baseline: every turn's whole conversation prefilled again), in one run.

A stateless client sends the whole conversation each turn, as OpenAI clients do. With resident
sessions (the default) the server finds the session whose history the new rendering extends and
prefills only the new turn; with `--no-http-reuse-sessions` every request prefills everything.
Both runs load the model once, use the same greedy replies (checked), and talk to an in-process
server through the `openai` package. Prints one JSON document.

    python ops/bench/http_chat.py --turns 50 --max-tokens 16 --threads 2
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

from kakeya.runtime.common.config import EngineConfig, HttpConfig, ModelConfig, RuntimeConfig, ServerConfig
from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.engine.loader import load_model
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.server import RuntimeServer
from kakeya.tokenizer import load_tokenizer


def question(turn: int) -> str:
    return f"Turn {turn}: in one sentence, tell me something about the number {turn * 7 + 3}."


async def conversation(loaded, tokenizer, reuse: bool, turns: int, max_tokens: int) -> dict:
    config = RuntimeConfig(engine=EngineConfig(kv_budget_bytes=2 * 1024**3), server=ServerConfig(port=0),
                           http=HttpConfig(port=0, reuse_sessions=reuse))
    server = RuntimeServer(config)
    server.http.use_tokenizer(tokenizer)
    await server.start()
    await server.attach(Host(config, loaded, on_engine_death=lambda exc: None))
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.http.port}/v1", api_key="none",
                                max_retries=0, timeout=600)
    messages, rows = [], []
    try:
        for turn in range(1, turns + 1):
            messages.append({"role": "user", "content": question(turn)})
            started = time.perf_counter()
            reply = await client.chat.completions.create(model="any", messages=messages, max_tokens=max_tokens,
                                                         temperature=0)
            seconds = time.perf_counter() - started
            usage = reply.usage
            rows.append({"turn": turn, "ms": round(seconds * 1e3, 1), "prompt_tokens": usage.prompt_tokens,
                         "cached_tokens": usage.prompt_tokens_details.cached_tokens,
                         "completion_tokens": usage.completion_tokens})
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
    finally:
        await client.close()
        await server.stop(0)
    return {"turns": rows, "replies": [m["content"] for m in messages if m["role"] == "assistant"]}


def summary(rows: list[dict], window: int) -> dict:
    first = statistics.median(r["ms"] for r in rows[:window])
    last = statistics.median(r["ms"] for r in rows[-window:])
    return {"first_turns_median_ms": first, "last_turns_median_ms": last, "growth": round(last / first, 2),
            "last_prompt_tokens": rows[-1]["prompt_tokens"],
            "prefilled_tokens_total": sum(r["prompt_tokens"] - r["cached_tokens"] for r in rows)}


async def run(args: argparse.Namespace) -> dict:
    loaded = await asyncio.to_thread(load_model, ModelConfig(model=args.model), ATTENTION_NAME)
    tokenizer = await asyncio.to_thread(load_tokenizer, args.model)
    results = {}
    for name, reuse in (("resident", True), ("reprefill", False)):
        results[name] = await conversation(loaded, tokenizer, reuse, args.turns, args.max_tokens)
    resident, baseline = (summary(results[n]["turns"], args.window) for n in ("resident", "reprefill"))
    return {
        "benchmark": "http_chat", "model": loaded.model_id, "device": str(loaded.device),
        "torch_threads": torch.get_num_threads(), "turns": args.turns, "max_tokens": args.max_tokens,
        "same_replies": results["resident"]["replies"] == results["reprefill"]["replies"],
        "resident": resident, "reprefill": baseline,
        "last_turns_speedup": round(baseline["last_turns_median_ms"] / resident["last_turns_median_ms"], 2),
        "per_turn": {name: results[name]["turns"] for name in results},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--window", type=int, default=5, help="turns whose median is the first and last figure")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--model", default=None, help="as `kakeya serve --model` (default: the embedded one)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
