"""One generation for an HTTP request: append the request's new tokens to its leased session,
generate, and turn the token stream into text (stop strings applied, EOS ids left out)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from kakeya.actors.messages import Append, Generate, GenerateParams
from kakeya.actors.token_stream import Done, StopReason, TokenStream
from kakeya.runtime.common.errors import InvalidRequest
from kakeya.runtime.engine.sampler import SamplingParams
from kakeya.text import IncrementalDecoder

from .schemas import MAX_TOKENS_PER_MESSAGE
from .tool_calls import Holdback

if TYPE_CHECKING:
    from kakeya.actors.session_rules import SessionRules

    from .resident import Lease

# Tokens the reader takes from the stream at once: a client that fell behind catches up in one go.
_BATCH = MAX_TOKENS_PER_MESSAGE


def sampling(temperature: float | None, top_p: float | None, seed: int | None) -> SamplingParams:
    """OpenAI's defaults: temperature 1 and top_p 1 when a request leaves them out."""
    return SamplingParams(temperature=1.0 if temperature is None else temperature,
                          top_p=1.0 if top_p is None else top_p,
                          seed=None if seed is None else seed % 2**64)


def token_limit(rules: "SessionRules", prompt: Sequence[int], requested: int | None) -> int:
    """The request's max_tokens, checked; without one, as many as the limits leave room for."""
    rules.check_append(0, prompt)
    limit = requested
    if limit is None:
        limit = min(rules.limits.max_generate_tokens, rules.max_history_tokens - len(prompt))
        if limit <= 0:
            raise InvalidRequest(f"the prompt of {len(prompt)} tokens leaves no room to generate within "
                                 f"{rules.max_history_tokens} tokens")
    rules.check_generate(len(prompt), limit)
    return limit


class Generation:
    """Append and Generate go to the session back to back, so nothing can slip in between (an
    idle session is evictable). `reusable` says whether the session's history is exactly
    `lease.history` afterwards, which is what lets the next request extend it."""

    def __init__(self, lease: "Lease", new_tokens: Sequence[int], params: GenerateParams, tokenizer: Any,
                 stop: Sequence[str] = (), min_tokens: int = 1) -> None:
        """min_tokens: after the first token, the tokens a piece waits for (1: each as it comes)."""
        if not 1 <= min_tokens <= _BATCH:
            raise InvalidRequest(f"min tokens per message must be within 1..{_BATCH}, not {min_tokens}")
        self.lease = lease
        self.prompt_tokens = len(lease.history) + len(new_tokens)
        self.tokens: list[int] = []
        self.text = ""
        self.stop_reason: StopReason | None = None
        self.stopped_by_string = False
        self.ended = False  # the lease went back (HttpState.end)
        self._new = tuple(new_tokens)
        self._params = params
        self._stream = TokenStream()
        self._decoder = IncrementalDecoder(tokenizer, skip_special_tokens=True)
        self._stops = Holdback(tuple(stop)) if stop else None
        self._min_tokens = min_tokens

    @property
    def reusable(self) -> bool:
        return self.stop_reason in (StopReason.EOS, StopReason.MAX_TOKENS) and not self.stopped_by_string

    @property
    def finish_reason(self) -> str:
        return "length" if self.stop_reason is StopReason.MAX_TOKENS and not self.stopped_by_string else "stop"

    async def start(self) -> None:
        """Sends the new tokens and the Generate; returns once the append is in the history."""
        reply = asyncio.get_running_loop().create_future()
        session = self.lease.session
        session.send(Append(self._new, reply))
        try:
            session.send(Generate(self._params, self._stream))
        finally:
            try:
                await reply
            except BaseException:
                self._stream.cancel()  # the Generate must not run on a history without the append
                raise
        self.lease.history.extend(self._new)

    def cancel(self) -> None:
        self._stream.cancel()

    async def pieces(self) -> AsyncIterator[str]:
        """The reply's text as it becomes final; the stream is cancelled however this ends."""
        try:
            async for item in self._stream.batches(_BATCH, self._min_tokens):
                if isinstance(item, Done):
                    self.stop_reason = item.stop_reason
                elif isinstance(item, list):
                    text = self._push(item)
                    if text:
                        yield text
                    if self.stopped_by_string:
                        return
            tail = self._filter(self._decoder.flush())
            if self._stops is not None and not self._stops.held:
                tail += self._stops.flush()  # the end of a partial stop string that never completed
            if self.reusable:
                self.lease.history.extend(self.tokens)  # before the last yield: a reader may stop there
            if tail:
                self.text += tail
                yield tail
        finally:
            self._stream.cancel()

    async def run(self) -> str:
        async for _ in self.pieces():
            pass
        return self.text

    def _push(self, tokens: list[int]) -> str:
        out = []
        eos = self.lease.eos_token_ids
        for token in tokens:
            self.tokens.append(token)
            if token in eos:
                continue  # the end of the reply, not its content
            out.append(self._filter(self._decoder.push(token)))
            if self.stopped_by_string:
                break
        text = "".join(out)
        self.text += text
        return text

    def _filter(self, text: str) -> str:
        if self._stops is None or not text:
            return text
        out = self._stops.push(text)
        if self._stops.held:
            self.stopped_by_string = True
            self._stream.cancel()
        return out
