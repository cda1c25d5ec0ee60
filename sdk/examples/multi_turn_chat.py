"""A multi-turn chat on one session: each turn appends only its own tokens, replies stream as text.

    kakeya serve &                      # the runtime, on the embedded model
    python sdk/examples/multi_turn_chat.py --address 127.0.0.1:50051

After every turn the history length the runtime reports equals the ids the chat recorded, and
`prefill` shows the runtime prefilled only the new turn, not the conversation.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from kakeya import ChatSession, Client, load_tokenizer

QUESTIONS = [
    "What is the capital of France?",
    "What is a famous landmark there?",
    "Summarize our conversation in one sentence.",
]


async def main(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.model)
    async with Client(args.address, api_key=args.api_key) as client:
        async with await ChatSession.create(client, tokenizer, system=args.system) as chat:
            for question in QUESTIONS[:args.turns]:
                await chat.add_user(question)
                print(f"user> {question}\nassistant> ", end="", flush=True)
                async for text in chat.reply(max_tokens=args.max_tokens):
                    print(text, end="", flush=True)
                turn = chat.turns[-1]
                info = await chat.session.info()
                # The local record and the runtime agree on the history, token for token in length.
                assert info.history_length == len(chat.token_ids), (info.history_length, len(chat.token_ids))
                print(f"\n  [{len(turn.generated_ids)} tokens generated; history {info.history_length} tokens]")
            print(f"{len(chat.messages)} messages, {len(chat.token_ids) + len(chat.pending_ids)} tokens")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--api-key", default=os.environ.get("KAKEYA_API_KEY"))
    parser.add_argument("--model", default=None, help="tokenizer source; default: the embedded model")
    parser.add_argument("--system", default="You are a concise assistant.")
    parser.add_argument("--turns", type=int, default=len(QUESTIONS))
    parser.add_argument("--max-tokens", type=int, default=64)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
