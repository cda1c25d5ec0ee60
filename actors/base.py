"""The actor base: one task, one bounded mailbox, an explicit stop, and crash reporting."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import structlog

from kakeya.runtime.common.errors import Overloaded, SessionNotFound

log = structlog.get_logger(__name__)


class _Stop:
    """Sentinel that ends the loop after every message sent before it."""


class Actor:
    """Subclasses implement `handle(message)`; messages are processed one at a time, in order.

    A full mailbox answers Overloaded at once instead of growing. A crash is logged with its
    traceback and reported to `on_crash`, so an owner can decide whether the process survives.
    """

    name = "actor"

    def __init__(self, mailbox_size: int, on_crash: Callable[[BaseException], None] | None = None) -> None:
        self._mailbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=mailbox_size)
        self._task: asyncio.Task[None] | None = None
        self._on_crash = on_crash
        self._is_handling = False
        self.is_stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    def send(self, message: Any) -> None:
        if self.is_stopping:
            raise self.closed_error()
        try:
            self._mailbox.put_nowait(message)
        except asyncio.QueueFull:
            raise Overloaded(f"{self.name} mailbox is full ({self._mailbox.maxsize} messages)") from None

    async def send_wait(self, message: Any) -> None:
        """Like send, but waits for mailbox room instead of failing (for messages that must land)."""
        if self._task is None or self._task.done() or self.is_stopping:
            raise self.closed_error()
        await self._mailbox.put(message)
        if self._task.done():
            # The actor ended while this sender waited for room (its final drain made the room):
            # nothing will handle the message, so it is failed here rather than left waiting.
            self._drain()

    def closed_error(self) -> Exception:
        return SessionNotFound(f"{self.name} is closed")

    @property
    def is_alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def is_idle(self) -> bool:
        return not self._is_handling and self._mailbox.empty()

    async def stop(self) -> None:
        """Processes what is already queued, then ends the task."""
        if self._task is None:
            return
        if not self.is_stopping:
            self.is_stopping = True
            await self._mailbox.put(_Stop())
        # wait() rather than awaiting the task: a cancelled caller must not cancel the actor.
        await asyncio.wait({self._task})

    async def _run(self) -> None:
        # The task inherited its creator's context: drop request-scoped log fields (a session
        # created by one RPC must not log that RPC's request id for the rest of its life).
        structlog.contextvars.clear_contextvars()
        try:
            await self.run_loop()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported, then the owner decides
            log.exception("actor_crashed", actor=self.name)
            self.is_stopping = True
            if self._on_crash is not None:
                self._on_crash(exc)
        finally:
            self.is_stopping = True  # however the task ends, later sends are refused
            self._drain()

    def _drain(self) -> None:
        """Fails whatever is still queued so no caller waits forever."""
        while not self._mailbox.empty():
            message = self._mailbox.get_nowait()
            reject = getattr(message, "reject", None)
            if reject is not None:
                reject(self.closed_error())

    async def run_loop(self) -> None:
        """Default loop: one message at a time. The scheduler overrides it with its step loop."""
        while (message := await self.next_message()) is not None:
            self._is_handling = True
            try:
                await self.handle(message)
            finally:
                self._is_handling = False

    async def next_message(self, block: bool = True) -> Any | None:
        """The next message, or None at stop (or, with block=False, when the mailbox is empty)."""
        if block:
            message = await self._mailbox.get()
        elif self._mailbox.empty():
            return None
        else:
            message = self._mailbox.get_nowait()
        if isinstance(message, _Stop):
            self.is_stopping = True
            return None
        return message

    async def handle(self, message: Any) -> None:
        raise NotImplementedError
