"""One Generate call's event stream: tokens from the scheduler, then exactly one Done or an error.

Producers never block (the scheduler must not wait on a client); the stream is bounded by the
request's max_tokens. The consumer cancels it, and so do the scheduler (a consumer that stopped
reading) and the session (closed under it); the scheduler polls `is_cancelled` each step.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from dataclasses import dataclass
from typing import AsyncIterator, Union


class StopReason(enum.Enum):
    MAX_TOKENS = 1
    EOS = 2
    CANCELLED = 3
    TRUNCATED = 4


@dataclass(frozen=True, slots=True)
class Truncated:
    dropped_token_count: int


@dataclass(frozen=True, slots=True)
class Done:
    stop_reason: StopReason
    generated_token_count: int
    prefill_token_count: int
    prefill_duration_s: float
    total_duration_s: float
    draft_token_count: int = 0  # speculative decoding: tokens proposed and verified
    accepted_draft_token_count: int = 0


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


Event = Union[int, Truncated, Done]


class TokenStream:
    """Written by the scheduler and the session actor, read by one Generate handler, all on the
    event loop. A deque and one waiter rather than an asyncio.Queue: the reader can take every
    token that is ready at once (`batches`), and a push costs no more than an append."""

    def __init__(self) -> None:
        self._events: collections.deque[Event | _Failed] = collections.deque()
        self._ready: asyncio.Future[None] | None = None  # set by a push that satisfies the waiting reader
        self._wanted = 1  # events the waiting reader needs before a push wakes it
        self.is_cancelled = False
        self.cancel_cause: BaseException | None = None  # why, when the stop was not the client's
        self.is_finished = False
        self._last_read_at = time.monotonic()

    def is_stalled(self, stall_s: float) -> bool:
        """Events wait unread and the consumer has taken none for stall_s. A reader waiting for a
        fuller message (`batches`' minimum) is not stalled: the held tokens are its choice."""
        waiting = self._ready is not None and not self._ready.done()
        return bool(self._events) and not waiting and time.monotonic() - self._last_read_at > stall_s

    def push(self, event: Event) -> None:
        if self.cancel_cause is not None and isinstance(event, Done) and event.stop_reason is StopReason.CANCELLED:
            # A CANCELLED done would tell the client it stopped the call itself; it must learn
            # the real cause (the server shutting down) to retry elsewhere.
            return self.fail(self.cancel_cause)
        if not self.is_finished:
            self._events.append(event)
            self.is_finished = isinstance(event, Done)
            self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.is_finished:
            self.is_finished = True
            self._events.append(_Failed(error))
            self._wake()

    def cancel(self, cause: BaseException | None = None) -> None:
        """Stops the generation within one scheduler step. With a cause, the stream ends with that
        error rather than a CANCELLED done; the first cause given stays."""
        self.is_cancelled = True
        if self.cancel_cause is None:
            self.cancel_cause = cause

    async def __aiter__(self) -> AsyncIterator[Event]:
        """One event at a time."""
        while True:
            item = await self._take(1)
            event = item[0] if isinstance(item, list) else item
            yield event
            if isinstance(event, Done):
                return

    async def batches(self, limit: int, minimum: int = 1) -> AsyncIterator[list[int] | Truncated | Done]:
        """The events in order, the tokens ready together as lists of 1..limit: a reader that fell
        behind catches up in fewer writes. After the first token, a list waits until `minimum`
        tokens are ready, or the tokens before another event are all there will be."""
        wanted = 1  # the first token never waits: it is the time to first token
        while True:
            item = await self._take(limit, wanted)
            if isinstance(item, list):
                wanted = minimum
            yield item
            if isinstance(item, Done):
                return

    async def _take(self, limit: int, wanted: int = 1) -> list[int] | Truncated | Done:
        while not self._satisfies(wanted):
            self._wanted = wanted
            self._ready = asyncio.get_running_loop().create_future()
            await self._ready
        self._last_read_at = time.monotonic()
        if isinstance(self._events[0], int):
            tokens = []
            while self._events and len(tokens) < limit and isinstance(self._events[0], int):
                tokens.append(self._events.popleft())
            return tokens
        event = self._events.popleft()
        if isinstance(event, _Failed):
            raise event.error
        return event

    def _satisfies(self, wanted: int) -> bool:
        # Any event but a token goes at once, and ends the run of tokens before it, so those go too.
        events = self._events
        return bool(events) and (len(events) >= wanted or not isinstance(events[0], int)
                                 or not isinstance(events[-1], int))

    def _wake(self) -> None:
        if self._ready is not None and not self._ready.done() and self._satisfies(self._wanted):
            self._ready.set_result(None)
