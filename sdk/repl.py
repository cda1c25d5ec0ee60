"""`kakeya chat`: an interactive chat with a running runtime, replies streamed as they are sampled.

Lines are user messages; `/reset` starts a new conversation (a new session), `/quit` or end of
input exits. A reply cut by `--max-tokens` ends with a dim `[max tokens]`. The tokenizer (the
`[chat]` extra) is loaded locally: the runtime only sees ids.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading

from .chat import ChatSession, ChatStateError
from .client import DEFAULT_ADDRESS, Client
from .errors import KakeyaError, RuntimeUnavailableError
from .tokenizer import load_tokenizer
from .types import StopReason

HELP = "/reset starts a new conversation, /quit (or Ctrl-D) exits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"the runtime, host:port or unix:/path [default {DEFAULT_ADDRESS}]")
    parser.add_argument("--api-key", default=os.environ.get("KAKEYA_API_KEY"), help="API key [env KAKEYA_API_KEY]")
    parser.add_argument("--max-tokens", type=int, default=256, help="most tokens per reply [default 256]")
    parser.add_argument("--system", default=None, help="system prompt [default: the template's own]")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy [default 0]")
    parser.add_argument("--model", default=None,
                        help="tokenizer: a .gguf file, a local model directory or a cached hub id; "
                             "must match the served model [default: the embedded model]")


def run(args: argparse.Namespace) -> int:
    """Runs the REPL; returns the process exit code."""
    try:
        return asyncio.run(_chat(args))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    print(f"kakeya chat: {message}", file=sys.stderr)
    return 1


async def _chat(args: argparse.Namespace) -> int:
    async with Client(args.address, api_key=args.api_key) as client:
        # Reach the runtime first: it fails fast, while loading the tokenizer takes seconds.
        try:
            info = await client.runtime_info()
        except RuntimeUnavailableError as exc:
            return _fail(f"the runtime at {args.address} is not reachable ({exc.message}); "
                         "start it with `kakeya serve` or pass --address")
        except KakeyaError as exc:
            return _fail(f"the runtime at {args.address} refused the connection: {exc.message}")
        try:
            tokenizer = load_tokenizer(args.model)
        except (ImportError, OSError, ValueError) as exc:
            return _fail(f"cannot load the tokenizer: {exc}")
        if len(tokenizer) > info.vocab_size:
            return _fail(f"the tokenizer ({len(tokenizer)} tokens) does not fit the served model "
                         f"{info.model_id} ({info.vocab_size}); pass --model")
        print(f"kakeya chat on {info.model_id} at {args.address}; {HELP}", flush=True)
        try:
            await _loop(client, tokenizer, args)
        except KakeyaError as exc:
            return _fail(f"{type(exc).__name__}: {exc.message}")
        except ChatStateError as exc:
            return _fail(str(exc))
    return 0


async def _loop(client: Client, tokenizer: object, args: argparse.Namespace) -> None:
    sampling = {"temperature": args.temperature} if args.temperature > 0 else {}
    chat = await ChatSession.create(client, tokenizer, system=args.system, label="kakeya-chat")
    try:
        while True:
            line = await _read_line("> ")
            if line is None or line.strip() == "/quit":
                break
            text = line.strip()
            if text == "/reset":
                await chat.close()
                chat = await ChatSession.create(client, tokenizer, system=args.system, label="kakeya-chat")
                print("(new conversation)", flush=True)
                continue
            if not text:
                continue
            if text.startswith("/"):
                print(HELP, flush=True)
                continue
            await chat.add_user(text)
            async for piece in chat.reply(max_tokens=args.max_tokens, **sampling):
                print(piece, end="", flush=True)
            if chat.last_stop_reason is StopReason.MAX_TOKENS:
                # Otherwise a reply cut mid-sentence reads as the model's whole answer.
                print(_dim(" [max tokens]"), end="")
            print(flush=True)
    finally:
        with contextlib.suppress(KakeyaError):
            await chat.close()


def _dim(text: str) -> str:
    return f"\x1b[2m{text}\x1b[0m" if sys.stdout.isatty() else text


def _read_line(prompt: str) -> asyncio.Future:
    """input() on a daemon thread: the loop keeps running, and Ctrl-C never waits on a blocked read
    (an executor thread would be joined at exit). Resolves to None at end of input."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def deliver(line: str | None) -> None:
        if not future.done():
            future.set_result(line)

    def read() -> None:
        try:
            line = input(prompt)
        except (EOFError, OSError, ValueError):
            line = None
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(deliver, line)

    threading.Thread(target=read, name="kakeya-chat-stdin", daemon=True).start()
    return future
