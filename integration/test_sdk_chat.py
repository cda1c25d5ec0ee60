"""The chat helpers, incremental detokenization, `kakeya chat` and the SDK examples, on a real runtime."""

from __future__ import annotations

import asyncio
import pathlib
import sys

import pytest

from kakeya import ChatSession, Client, IncrementalDecoder, stream_text
from kakeya.chat import chat_eos_token_ids, closing_ids, render_ids

from .harness import TIMEOUT_S

# Subprocesses load the tokenizer (seconds) and share the CPU with the in-process runtime.
PROCESS_TIMEOUT_S = 600.0
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "sdk" / "examples"
QUESTIONS = ["What is the capital of France?", "Name a famous landmark there.", "Say goodbye."]
MULTI_BYTE = "naïve café — 日本語 🙂"

pytestmark = pytest.mark.timeout(1200)


async def bounded(awaitable):
    return await asyncio.wait_for(awaitable, TIMEOUT_S)


async def collect(texts) -> list[str]:
    return [text async for text in texts]


async def read_reply(chat: ChatSession, max_tokens: int) -> str:
    return "".join(await collect(chat.reply(max_tokens=max_tokens)))


@pytest.fixture
async def client(server):
    async with Client(server.server.address) as client:
        yield client


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


async def test_delta_append_keeps_user_turns_and_exact_generated_ids(client, tokenizer):
    chat = await bounded(ChatSession.create(client, tokenizer))
    async with chat:
        replies = []
        for question in QUESTIONS:
            await bounded(chat.add_user(question))
            replies.append(await bounded(read_reply(chat, max_tokens=12)))
        assert (await bounded(chat.session.info())).history_length == len(chat.token_ids)
        turns, messages = chat.turns, chat.messages
        assert [turn.role for turn in turns] == ["user", "assistant"] * len(QUESTIONS)
        assert chat.token_ids + chat.pending_ids == [i for turn in turns for i in turn.token_ids]
        full = render_ids(tokenizer, messages)
        for k, turn in enumerate(turns):
            # Offsets into the one-shot render of the whole conversation; the template is prefix-stable.
            before = render_ids(tokenizer, messages[:k])
            assert full[:len(before)] == before
            if turn.role == "user":
                assert list(turn.appended_ids) == full[len(before):len(before) + len(turn.appended_ids)]
                continue
            prompt = render_ids(tokenizer, messages[:k], add_generation_prompt=True)[len(before):]
            assert list(turn.appended_ids) == prompt
            generated = list(turn.generated_ids)
            assert tokenizer.decode(generated, skip_special_tokens=True) == replies[k // 2] == turn.content
            emitted_closing = 1 if generated[-1] == closing_ids(tokenizer)[0] else 0
            assert list(turn.closing_ids) == closing_ids(tokenizer)[emitted_closing:]
        # Where every reply re-encodes to its own ids, the delta history is the full render.
        closing_start = closing_ids(tokenizer)[0]
        if all(encode(tokenizer, t.content) == [i for i in t.generated_ids if i != closing_start]
               for t in turns if t.role == "assistant"):
            assert chat.token_ids + chat.pending_ids == full
        # The assistant turns are exactly what the model generated from exactly this history:
        # greedy from the same prefix on a fresh session reproduces them (deterministic mode).
        offset = 0
        for turn in turns:
            offset += len(turn.appended_ids)
            if turn.role == "assistant":
                async with client.session(eos_token_ids=chat_eos_token_ids(tokenizer),
                                          initial_tokens=chat.token_ids[:offset]) as probe:
                    again = await bounded(probe.generate(max_tokens=12).collect())
                assert again == list(turn.generated_ids)
            offset += len(turn.generated_ids) + len(turn.closing_ids)


async def test_reply_cut_mid_character_stays_as_generated(client, tokenizer):
    """The hazard of re-rendering, live: the cut reply decodes to U+FFFD, which re-encodes to other ids."""
    async with await bounded(ChatSession.create(client, tokenizer)) as chat:
        await bounded(chat.add_user("Translate 'good morning' to Japanese."))
        text = await bounded(read_reply(chat, max_tokens=3))
        await bounded(chat.add_user("And in French?"))
        reply = chat.turns[1]
        assert len(reply.generated_ids) == 3 and reply.closing_ids == tuple(closing_ids(tokenizer))
        # The stream's last piece is the cut character, flushed as U+FFFD, exactly as decoded.
        assert text == reply.content and text.endswith("\ufffd") and "\ufffd" not in text[:-1]
        assert encode(tokenizer, reply.content) != list(reply.generated_ids)
        start = len(reply.appended_ids) + len(chat.turns[0].appended_ids)
        assert chat.token_ids[start:start + 3] == list(reply.generated_ids)
        assert render_ids(tokenizer, chat.messages) != chat.token_ids  # what a re-render would have sent
        assert (await bounded(chat.session.info())).history_length == len(chat.token_ids)


async def test_eos_and_closing_tokens(client, tokenizer):
    async with await bounded(ChatSession.create(client, tokenizer, system="Answer in one word.")) as chat:
        assert (await bounded(chat.session.info())).eos_token_ids == tuple(chat_eos_token_ids(tokenizer))
        await bounded(chat.add_user("Hi"))
        await bounded(read_reply(chat, max_tokens=64))
        stream_ended_at_eos = chat.turns[-1].generated_ids[-1] in chat_eos_token_ids(tokenizer)
        assert chat.turns[0].role == "system" and stream_ended_at_eos
        assert chat.pending_ids == closing_ids(tokenizer)[1:]


def test_incremental_decoder_never_splits_a_character(tokenizer):
    ids = encode(tokenizer, MULTI_BYTE)
    decoder = IncrementalDecoder(tokenizer)
    chunks = [decoder.push(token_id) for token_id in ids] + [decoder.flush()]
    assert "".join(chunks) == tokenizer.decode(ids) == MULTI_BYTE
    assert not any("\ufffd" in chunk for chunk in chunks)
    # Byte-level tokens split these characters, so some pushes had to hold their bytes back.
    assert any(tokenizer.decode([token_id]).endswith("\ufffd") for token_id in ids) and "" in chunks[:-1]


async def test_stream_text_over_a_token_stream(tokenizer):
    async def tokens():
        for token_id in [1] + encode(tokenizer, MULTI_BYTE) + [2]:
            yield token_id

    pieces = await bounded(collect(stream_text(tokens(), tokenizer, skip_special_tokens=True)))
    assert "".join(pieces) == MULTI_BYTE and not any("\ufffd" in piece for piece in pieces)
    pieces = await bounded(collect(stream_text(tokens(), tokenizer)))
    assert "".join(pieces) == f"<|im_start|>{MULTI_BYTE}<|im_end|>"


async def test_stream_text_over_a_generation(client, tokenizer):
    prompt = render_ids(tokenizer, [{"role": "user", "content": "Say hello in Japanese."}], add_generation_prompt=True)
    async with client.session(initial_tokens=prompt) as session:
        pieces = await bounded(collect(stream_text(session.generate(max_tokens=12), tokenizer)))
    async with client.session(initial_tokens=prompt) as session:
        ids = await bounded(session.generate(max_tokens=12).collect())  # greedy: the same ids
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces[:-1])


async def run_python(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), PROCESS_TIMEOUT_S)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process.returncode, out.decode(), err.decode()


async def test_chat_repl(server):
    code, out, err = await run_python("-m", "kakeya.runtime.server.cli", "chat", "--address", server.server.address,
                                      "--max-tokens", "8", stdin=b"Hello\n/quit\n")
    assert code == 0, err
    assert "kakeya chat on" in out and len(out.split("> ")[1].strip()) > 0
    assert "Traceback" not in err
    # Cut by --max-tokens: marked (plain text, stdout is no terminal here), not shown as a whole answer.
    reply = out.split("> ")[1]
    assert reply.rstrip("\n").endswith(" [max tokens]"), reply
    # A reply that ends at EOS carries no marker.
    code, out, err = await run_python("-m", "kakeya.runtime.server.cli", "chat", "--address", server.server.address,
                                      "--max-tokens", "64", "--system", "Answer in one word.", stdin=b"Hi\n")
    assert code == 0, err
    assert len(out.split("> ")[1].strip()) > 0 and "[max tokens]" not in out


async def test_chat_repl_without_a_runtime():
    code, out, err = await run_python("-m", "kakeya.runtime.server.cli", "chat", "--address", "127.0.0.1:1",
                                      stdin=b"Hello\n")
    assert code == 1
    assert "not reachable" in err and "127.0.0.1:1" in err and "kakeya serve" in err
    assert "Traceback" not in err + out


@pytest.mark.parametrize("script, args", [
    ("multi_turn_chat.py", ["--turns", "2", "--max-tokens", "8"]),
    ("concurrent_agents.py", ["--sessions", "3", "--turns", "2", "--max-tokens", "6"]),
    ("template_hazard.py", []),
])
async def test_examples_run(server, script, args):
    code, out, err = await run_python(str(EXAMPLES / script), "--address", server.server.address, *args)
    assert code == 0, err
    assert out.strip()
    if script == "concurrent_agents.py":
        assert out.count("generated=") == 3 and "tok/s" in out
    if script == "template_hazard.py":
        assert "3 of 3 conversations re-render to different tokens" in out
