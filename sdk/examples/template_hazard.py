"""Why a chat appends deltas: re-rendering the conversation can change the tokens of earlier turns.

    python sdk/examples/template_hazard.py                            # tokenizer only
    python sdk/examples/template_hazard.py --address 127.0.0.1:50051  # also with a live reply

SmolLM2's ChatML template is prefix-stable for plain text: rendering the first k messages gives
a token prefix of rendering all of them. The hazard is in the assistant turns. The history holds
the ids the model generated; a re-render holds the ids the tokenizer gives for the decoded text,
and tokenization is not injective:

  A. a reply cut by max_tokens in the middle of a character. Greedy on this model, the reply to
     "Translate 'good morning' to Japanese." starts [10391, 233, 10391]: 'わ' and the first byte
     of the next character. Decoded that is 'わ\\ufffd'; re-encoded, U+FFFD becomes its own token.
  B. a word the sampler spelled with other pieces: [' n', 'uns'] decodes to ' nuns', which
     re-encodes as the single token ' nuns'.

A runtime that matched re-rendered prompts against its cache would lose everything after the
first differing token, and the model would be fed text it never wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from kakeya import ChatSession, Client, load_tokenizer
from kakeya.chat import closing_ids, render_ids

QUESTION = "Translate 'good morning' to Japanese."
FOLLOW_UP = "And in French?"
# Case A, as this model generates it greedily (the live mode below asks the runtime again).
GREEDY_REPLY_CUT_MID_CHARACTER = [10391, 233, 10391]


def split_spelling(tokenizer) -> list[int]:
    """Case B: 'Two nuns.' spelled with ' n' + 'uns', as sampling at temperature 1 produced it."""
    return [i for piece in ("Two", " n", "uns", ".") for i in tokenizer.encode(piece, add_special_tokens=False)]


def delta_history(tokenizer, reply_ids: list[int]) -> tuple[list[int], list[dict]]:
    """What ChatSession appends for user, reply, user — built by hand, without a runtime."""
    user, follow_up = {"role": "user", "content": QUESTION}, {"role": "user", "content": FOLLOW_UP}
    first = render_ids(tokenizer, [user])
    prompt = render_ids(tokenizer, [user], add_generation_prompt=True)[len(first):]
    reply = {"role": "assistant", "content": tokenizer.decode(reply_ids, skip_special_tokens=True)}
    head = render_ids(tokenizer, [user, reply])
    follow = render_ids(tokenizer, [user, reply, follow_up])[len(head):]
    return first + prompt + reply_ids + closing_ids(tokenizer) + follow, [user, reply, follow_up]


def check_prefix_stable(tokenizer) -> None:
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "  Spaces, tabs\tand\nnewlines  "}]
    full = render_ids(tokenizer, messages)
    stable = all(full[:len(part)] == part for part in (render_ids(tokenizer, messages[:k]) for k in range(1, 3)))
    print(f"template prefix-stable on plain text: {stable}")


def compare(tokenizer, title: str, history: list[int], messages: list[dict], reply_ids: list[int]) -> bool:
    rerendered = render_ids(tokenizer, messages)
    same = next((i for i, (a, b) in enumerate(zip(history, rerendered)) if a != b), min(len(history), len(rerendered)))
    print(f"\n{title}")
    print(f"  reply ids {reply_ids} -> text {messages[1]['content']!r} -> re-encoded "
          f"{tokenizer.encode(messages[1]['content'], add_special_tokens=False)}")
    if history == rerendered:
        print("  the re-render equals the history")
        return False
    print(f"  history {len(history)} tokens, re-render {len(rerendered)}; they first differ at position {same}")
    print(f"    history:   {tokenizer.convert_ids_to_tokens(history[same:same + 4])}")
    print(f"    re-render: {tokenizer.convert_ids_to_tokens(rerendered[same:same + 4])}")
    print(f"  a prefix cache keyed on the re-render reuses {same} tokens and recomputes {len(rerendered) - same}")
    return True


async def live(tokenizer, args: argparse.Namespace) -> bool:
    """Case A on the runtime: a real ChatSession, its reply cut by max_tokens."""
    async with Client(args.address, api_key=args.api_key) as client:
        async with await ChatSession.create(client, tokenizer) as chat:
            await chat.add_user(QUESTION)
            async for _ in chat.reply(max_tokens=len(GREEDY_REPLY_CUT_MID_CHARACTER)):
                pass
            await chat.add_user(FOLLOW_UP)
            assert (await chat.session.info()).history_length == len(chat.token_ids)
            reply_ids = list(chat.turns[1].generated_ids)
            return compare(tokenizer, "live: the runtime's reply, cut by max_tokens", chat.token_ids,
                           chat.messages, reply_ids)


def main(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.model)
    check_prefix_stable(tokenizer)
    found = []
    for title, reply_ids in (("A: a reply cut in the middle of a character", GREEDY_REPLY_CUT_MID_CHARACTER),
                             ("B: a word spelled with other pieces", split_spelling(tokenizer))):
        history, messages = delta_history(tokenizer, reply_ids)
        found.append(compare(tokenizer, title, history, messages, reply_ids))
    if args.address:
        found.append(asyncio.run(live(tokenizer, args)))
    print(f"\n{sum(found)} of {len(found)} conversations re-render to different tokens than their history")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=None, help="a running runtime: also show the hazard live")
    parser.add_argument("--api-key", default=os.environ.get("KAKEYA_API_KEY"))
    parser.add_argument("--model", default=None, help="tokenizer source; default: the embedded model")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
