"""Chat on a session: the model's chat template applied turn by turn, never re-rendering history.

Opt-in: needs the `[chat]` extra (transformers, gguf); transformers is imported only when a
tokenizer is loaded.

Why deltas. A session's history is raw ids with their KV cache, so each turn appends only its own
tokens. Re-rendering the whole conversation is fragile twice over: a template may rewrite earlier
turns (strip whitespace, drop past reasoning), and a reply, decoded and re-encoded, need not give
back the ids the model generated (tokenization is not injective; see examples/template_hazard.py).
So assistant turns are recorded as the exact generated ids.

How a new message's tokens are found. Render (with the template, then tokenize) the messages
already in the history, and those plus the new message; when the first is a strict prefix of the
second, the rest is the new turn. If the template rewrote something earlier (no prefix), the
message is rendered after a fixed placeholder exchange instead, which yields the template's turn
format for it alone. The generation prompt (`<|im_start|>assistant\\n` in ChatML) is found the
same way and appended by `reply()`. The assistant's closing tokens (`<|im_end|>\\n`) come from a
rendered probe reply; those the model did not emit (all at max_tokens, the `\\n` after an
`<|im_end|>` EOS) are appended with the next message.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, AsyncGenerator, AsyncIterable, AsyncIterator

from .client import Client
from .session import Session, close_after
from .text import stream_text
from .tokenizer import chat_eos_token_ids, closing_ids, load_tokenizer, render_ids
from .types import StopReason

__all__ = ["ChatSession", "ChatStateError", "Turn", "chat_eos_token_ids", "closing_ids", "load_tokenizer",
           "render_ids"]

_PLACEHOLDER = [{"role": "user", "content": "."}, {"role": "assistant", "content": "."}]


class ChatStateError(RuntimeError):
    """The local record of the conversation no longer matches the session's history."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One message and the ids it put in the history, in order: appended, generated, closing."""

    role: str
    content: str
    appended_ids: tuple[int, ...]   # rendered by the template: a whole message, or the generation prompt
    generated_ids: tuple[int, ...] = ()  # sampled by the model, exactly as streamed (assistant turns)
    closing_ids: tuple[int, ...] = ()    # end-of-turn tokens the model did not emit itself

    @property
    def token_ids(self) -> tuple[int, ...]:
        return self.appended_ids + self.generated_ids + self.closing_ids


def _delta(tokenizer: Any, before: list[dict], after: list[dict], add_generation_prompt: bool) -> list[int]:
    head = render_ids(tokenizer, before)
    full = render_ids(tokenizer, after, add_generation_prompt=add_generation_prompt)
    if len(full) > len(head) and full[:len(head)] == head:
        return full[len(head):]
    return []


class ChatSession:
    """A conversation on one session. The session should stop at `chat_eos_token_ids(tokenizer)`;
    `ChatSession.create` opens one that does.

        chat = await ChatSession.create(client, tokenizer, system="Be brief.")
        await chat.add_user("Hello")
        async for text in chat.reply(max_tokens=64):
            print(text, end="")
    """

    def __init__(self, session: Session, tokenizer: Any, *, system: str | None = None) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self._closing = closing_ids(tokenizer)
        self._messages: list[dict] = []  # messages whose tokens are in the history
        self._system = system  # rendered with the first message, as templates expect
        self._turns: list[Turn] = []
        self._history: list[int] = []  # ids the runtime holds, as far as this object knows
        self._pending: list[int] = []  # closing ids to send with the next append
        self._active_reply: AsyncGenerator[str, None] | None = None
        self.last_stop_reason: StopReason | None = None  # of the last reply: MAX_TOKENS means it was cut

    @classmethod
    async def create(cls, client: Client, tokenizer: Any, *, system: str | None = None,
                     label: str = "chat") -> ChatSession:
        session = await client.create_session(eos_token_ids=chat_eos_token_ids(tokenizer), label=label)
        return cls(session, tokenizer, system=system)

    @property
    def messages(self) -> list[dict]:
        """The conversation as text; assistant contents are the decoded replies."""
        return [dict(message) for message in self._messages]

    @property
    def turns(self) -> list[Turn]:
        return list(self._turns)

    @property
    def token_ids(self) -> list[int]:
        """The ids in the session's history; `pending_ids` (closing ids) go with the next append."""
        return list(self._history)

    @property
    def pending_ids(self) -> list[int]:
        return list(self._pending)

    async def add_user(self, text: str) -> int:
        return await self.add_message({"role": "user", "content": text})

    async def add_message(self, message: dict) -> int:
        """Appends one message's tokens (not the history's) and returns the history length.

        A reply still open is closed first, so its turn is recorded before this one.
        """
        await self._settle_reply()
        new = [{"role": "system", "content": self._system}] if self._system and not self._messages else []
        new.append(dict(message))
        messages, turns, ids = list(self._messages), [], []
        for item in new:
            delta = self._message_ids(messages, item)
            messages.append(item)
            turns.append(Turn(item["role"], item["content"], tuple(delta)))
            ids += delta
        await self._append(ids)  # one RPC; if it fails, neither side changed
        self._messages, self._turns = messages, self._turns + turns
        return len(self._history)

    def reply(self, max_tokens: int = 256, **sampling: Any) -> AsyncIterator[str]:
        """Streams the assistant's reply as text and records its ids as the assistant turn.

        `sampling` takes generate()'s temperature, top_p, top_k and seed. The text never splits a
        character; a reply cut by max_tokens mid-character ends with U+FFFD, as it decodes.
        Bound replies with max_tokens: leaving one early cancels the generation and records what
        was read, but the runtime has usually sampled a token more that no one read, so the next
        append finds the history longer than recorded and raises ChatStateError.
        """
        if self._active_reply is not None:
            raise ChatStateError("the previous reply is still open")
        if not self._messages or self._messages[-1]["role"] == "assistant":
            raise ChatStateError("reply() needs a new message first (add_user)")
        self._active_reply = self._stream_reply(max_tokens, sampling)
        return self._active_reply

    async def _stream_reply(self, max_tokens: int, sampling: dict) -> AsyncIterator[str]:
        prompt = _delta(self.tokenizer, self._messages, self._messages, add_generation_prompt=True)
        try:
            await self._append(prompt)
        except BaseException:
            self._active_reply = None  # nothing was generated: the user turn is still the last
            raise
        stream = self.session.generate(max_tokens, **sampling)
        generated: list[int] = []
        tokens = self._record(stream, generated)
        texts = stream_text(tokens, self.tokenizer, skip_special_tokens=True)
        try:
            # Both close before the turn is recorded, not whenever the loop's finalizer gets to them.
            async with contextlib.aclosing(tokens), contextlib.aclosing(texts):
                async for text in texts:
                    yield text
        finally:
            stream.cancel()
            self._active_reply = None
            self._finish_reply(prompt, generated, stream.stop_reason)

    async def _record(self, stream: AsyncIterable[int], generated: list[int]) -> AsyncIterator[int]:
        # Each id joins the history as it is read, so a reply left early records what was seen.
        async for token_id in stream:
            generated.append(token_id)
            self._history.append(token_id)
            yield token_id

    async def _settle_reply(self) -> None:
        # A reply left with `break` is closed only when collected; close it now, so that its
        # turn is recorded (or, never started, nothing was appended) before anything follows.
        reply, self._active_reply = self._active_reply, None
        if reply is not None:
            await reply.aclose()

    def _finish_reply(self, prompt: list[int], generated: list[int], stop: StopReason | None) -> None:
        # How much of the closing the model emitted itself (ChatML: `<|im_end|>`, then EOS stops it).
        emitted = next((k for k in range(min(len(generated), len(self._closing)), 0, -1)
                        if generated[-k:] == self._closing[:k]), 0)
        content_ids = generated[:len(generated) - emitted]
        if stop is StopReason.EOS and emitted == 0 and content_ids:
            content_ids = content_ids[:-1]  # an EOS outside the closing is not content
        content = self.tokenizer.decode(content_ids, skip_special_tokens=True)
        self.last_stop_reason = stop
        self._pending = self._closing[emitted:]
        self._messages.append({"role": "assistant", "content": content})
        self._turns.append(Turn("assistant", content, tuple(prompt), tuple(generated), tuple(self._pending)))

    def _message_ids(self, messages: list[dict], message: dict) -> list[int]:
        ids = _delta(self.tokenizer, messages, messages + [message], add_generation_prompt=False)
        if not ids:  # the template rewrote an earlier turn: take the message's own turn format
            ids = _delta(self.tokenizer, _PLACEHOLDER, _PLACEHOLDER + [message], add_generation_prompt=False)
        if not ids:
            raise ChatStateError(f"the chat template renders no tokens for a {message.get('role')!r} message")
        return ids

    async def _append(self, ids: list[int]) -> None:
        ids = self._pending + ids
        expected = len(self._history) + len(ids)
        # The returned length is exact even after a cancelled reply (appends wait for it to wind
        # down), so it catches tokens sampled after the reader left, which no one saw.
        length = await self.session.append(ids)
        self._history.extend(ids)
        self._pending = []
        if length != expected:
            raise ChatStateError(f"the session holds {length} tokens but {expected} were recorded: a reply "
                                 "left early had tokens sampled that were never read; start a new chat")

    async def close(self) -> int:
        """Closes the session (freeing its KV memory); returns its final history length."""
        await self._settle_reply()
        return await self.session.close()

    async def __aenter__(self) -> ChatSession:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: object) -> None:
        await self._settle_reply()  # no RPC: it cancels the stream and records the turn
        await close_after(self.session, exc)
