"""One Generate call's event stream: tokens from the scheduler, then exactly one Done or an error.

Producers never block (the scheduler must not wait on a client); the stream is bounded by the
request's max_tokens. Only the consumer cancels it; the scheduler polls `is_cancelled` each step.
"""

from __future__ import annotations

import asyncio
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
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Event | _Failed] = asyncio.Queue()
        self.is_cancelled = False
        self.is_finished = False
        self._last_read_at = time.monotonic()

    def is_stalled(self, stall_s: float) -> bool:
        """Events wait unread and the consumer has taken none for stall_s."""
        return not self._queue.empty() and time.monotonic() - self._last_read_at > stall_s

    def push(self, event: Event) -> None:
        if not self.is_finished:
            self._queue.put_nowait(event)
            self.is_finished = isinstance(event, Done)

    def fail(self, error: BaseException) -> None:
        if not self.is_finished:
            self.is_finished = True
            self._queue.put_nowait(_Failed(error))

    def cancel(self) -> None:
        self.is_cancelled = True

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self._queue.get()
            self._last_read_at = time.monotonic()
            if isinstance(event, _Failed):
                raise event.error
            yield event
            if isinstance(event, Done):
                return
