"""N agent sessions chatting at once: the runtime batches their forwards into shared steps.

    kakeya serve &
    python sdk/examples/concurrent_agents.py --address 127.0.0.1:50051 --sessions 8 --turns 3

Each agent holds its own session and runs several append/generate turns; all agents run
concurrently. Prints each session's token counts and the total generation rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass

from kakeya import ChatSession, Client, load_tokenizer

TOPICS = ["the ocean", "volcanoes", "honeybees", "the moon", "trains", "coffee", "glaciers", "owls"]
FOLLOW_UPS = ["Tell me one fact about {topic}.", "Why is that interesting?", "Give one more fact.",
              "Summarize what you said in five words."]


@dataclass
class AgentResult:
    name: str
    turns: int
    generated_tokens: int
    history_tokens: int
    seconds: float


async def agent(client: Client, tokenizer, index: int, args: argparse.Namespace) -> AgentResult:
    topic = TOPICS[index % len(TOPICS)]
    started = time.perf_counter()
    generated = 0
    async with await ChatSession.create(client, tokenizer, system=f"You are agent {index}; you study {topic}.",
                                        label=f"agent-{index}") as chat:
        for turn in range(args.turns):
            await chat.add_user(FOLLOW_UPS[turn % len(FOLLOW_UPS)].format(topic=topic))
            async for _ in chat.reply(max_tokens=args.max_tokens):
                pass  # the text is not needed here; the assistant turn is recorded either way
            generated += len(chat.turns[-1].generated_ids)
        history = (await chat.session.info()).history_length
    return AgentResult(f"agent-{index} ({topic})", args.turns, generated, history, time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.model)
    async with Client(args.address, api_key=args.api_key) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(agent(client, tokenizer, i, args) for i in range(args.sessions)))
        elapsed = time.perf_counter() - started
        info = await client.runtime_info()
    for result in results:
        print(f"{result.name:24} turns={result.turns} generated={result.generated_tokens:4} "
              f"history={result.history_tokens:4} {result.seconds:6.2f}s")
    total = sum(result.generated_tokens for result in results)
    print(f"{args.sessions} sessions, {total} tokens generated in {elapsed:.2f}s: {total / elapsed:.1f} tok/s total; "
          f"up to {info.max_sessions_per_forward} sessions shared a forward "
          f"(mean {info.mean_sessions_per_forward:.2f})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--api-key", default=os.environ.get("KAKEYA_API_KEY"))
    parser.add_argument("--model", default=None, help="tokenizer source; default: the embedded model")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
