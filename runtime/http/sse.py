"""Server-sent events, and a streamed response that always releases what its body holds."""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from .errors import dump_json, error_body

DONE = b"data: [DONE]\n\n"


def event(data: dict, name: str | None = None) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: ".encode() + dump_json(data) + b"\n\n"


def error_event(error: BaseException) -> bytes:
    """An error after the headers went out: OpenAI's envelope as one more event."""
    _, body = error_body(error)
    return event(body)


async def prefetch(pieces: AsyncIterator[str]) -> str | None:
    """The first piece (None for an empty reply): errors before the first token still get a status."""
    try:
        return await pieces.__anext__()
    except StopAsyncIteration:
        return None


async def chained(first: str | None, pieces: AsyncIterator[str]) -> AsyncIterator[str]:
    if first is not None:
        yield first
        async for piece in pieces:
            yield piece


class GuardedStream(StreamingResponse):
    """Calls `on_close` once the response ends however it ends: a client that leaves before the
    body starts never runs the body's own `finally`, and its session must still be released."""

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], Any]) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


async def guarded_stream(generation: Any, end: Callable[[Any, bool], None],
                         events: Callable[[AsyncIterator[str]], AsyncIterator[bytes]]) -> GuardedStream:
    """The SSE response of a generation: its first piece is awaited here, so an error before the
    first token still gets a status; `end(generation, False)` releases the session if that fails,
    or once the response ends however it ends (`end` is idempotent)."""
    pieces = generation.pieces()
    try:
        first = await prefetch(pieces)
    except BaseException:
        end(generation, False)
        raise
    return GuardedStream(events(chained(first, pieces)), on_close=lambda: end(generation, False))

