"""One generation: an async iterator of token ids, then the runtime's summary of the call.

Leaving `async for` early, cancelling the consuming task, `cancel()` and `aclose()` all cancel
the RPC, which makes the runtime stop the generation within one scheduler step.
"""

from __future__ import annotations

import asyncio
import collections

import grpc

from kakeya.proto.v1 import runtime_pb2 as pb

from .errors import ClientClosedError, InternalError, error_from_rpc
from .transport import Transport, is_task_cancelling
from .types import StopReason


class GenerationStream:
    """Token ids as they are sampled; `stop_reason` and the counts are set once the stream ends.

    The RPC starts when the stream is created, so the generation keeps its place in the session's
    order even before it is read. A stream can be read once.
    """

    def __init__(self, transport: Transport, request: pb.GenerateRequest, timeout_s: float | None) -> None:
        self._transport = transport
        self._call = transport.generate(request, timeout_s)
        self._is_finished = False  # no more reads: done and EOF seen, failed, or cancelled
        self._is_cancel_requested = False
        self._is_read = False
        self._pending: collections.deque[int] = collections.deque()  # the rest of a `tokens` message
        self.stop_reason: StopReason | None = None
        self.generated_token_count = 0
        self.prefill_token_count = 0
        self.prefill_duration_s = 0.0
        self.total_duration_s = 0.0
        self.dropped_token_count = 0
        # Speculative decoding: draft tokens the runtime verified for this call, and those accepted.
        self.draft_token_count = 0
        self.accepted_draft_token_count = 0

    def __aiter__(self) -> _TokenIterator:
        if self._is_read:
            raise RuntimeError("a generation stream can be read only once")
        self._is_read = True
        return _TokenIterator(self)

    async def collect(self) -> list[int]:
        """Reads the whole stream and returns its token ids."""
        iterator = self.__aiter__()
        try:
            return [token async for token in iterator]
        finally:
            await iterator.aclose()

    def cancel(self) -> None:
        """Stops the generation on the runtime. Tokens it already sampled stay in the history."""
        if self._is_finished:
            return
        self._is_finished = self._is_cancel_requested = True
        self._call.cancel()
        if self.stop_reason is None:
            self.stop_reason = StopReason.CANCELLED

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()

    @property
    def is_done(self) -> bool:
        return self._is_finished

    async def _next_token(self) -> int:
        if self._pending and not self._is_finished:
            return self._pending.popleft()
        while not self._is_finished:
            try:
                response = await self._call.read()
            except asyncio.CancelledError:
                was_cancel_requested = self._is_cancel_requested
                self.cancel()
                # A cancelled task must see its CancelledError; a reader woken because someone
                # called cancel() ends normally, and one whose client was closed learns why.
                if is_task_cancelling():
                    raise
                if was_cancel_requested:
                    raise StopAsyncIteration from None
                if self._transport.is_closed:
                    raise ClientClosedError("the client was closed during the generation") from None
                raise
            except grpc.aio.AioRpcError as exc:
                self._is_finished = True
                raise error_from_rpc(exc) from exc
            if response is grpc.aio.EOF:
                self._is_finished = True
                if self.stop_reason is None:
                    raise InternalError("the generation stream ended without its final event")
                break
            kind = response.WhichOneof("payload")
            if kind == "token_id":
                self.generated_token_count += 1
                return response.token_id
            if kind == "tokens" and response.tokens.token_ids:
                self.generated_token_count += len(response.tokens.token_ids)
                self._pending.extend(response.tokens.token_ids)
                return self._pending.popleft()
            if kind == "truncated":
                self.dropped_token_count += response.truncated.dropped_token_count
            elif kind == "done":
                self._apply_done(response.done)
        raise StopAsyncIteration

    def _apply_done(self, done: pb.GenerateDone) -> None:
        try:
            self.stop_reason = StopReason(done.stop_reason)
        except ValueError:
            self.cancel()
            raise InternalError(f"unknown stop reason {done.stop_reason}") from None
        self.generated_token_count = done.generated_token_count
        self.prefill_token_count = done.prefill_token_count
        self.prefill_duration_s = done.prefill_duration_seconds
        self.total_duration_s = done.total_duration_seconds
        self.draft_token_count = done.draft_token_count
        self.accepted_draft_token_count = done.accepted_draft_token_count

    def __repr__(self) -> str:
        state = self.stop_reason.name if self.stop_reason else "running"
        return f"<GenerationStream {state} generated={self.generated_token_count}>"


class _TokenIterator:
    """What `async for` holds. Dropping it (a `break`) cancels the RPC at once, not at the next GC."""

    __slots__ = ("_stream", "__weakref__")

    def __init__(self, stream: GenerationStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _TokenIterator:
        return self

    async def __anext__(self) -> int:
        return await self._stream._next_token()

    async def aclose(self) -> None:
        self._stream.cancel()

    def __del__(self) -> None:
        # A finished stream touches nothing here, so dropping it from another thread is safe.
        self._stream.cancel()

