"""A handle on one server-side session: append token ids, generate, inspect, close.

The session itself lives in the runtime and outlives this object and its connection; closing
is what frees its KV memory.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from kakeya.proto.v1 import runtime_pb2 as pb

from .blob import pack_chunks
from .errors import DeadlineExceededError, RuntimeUnavailableError, SessionClosedError
from .stream import GenerationStream
from .transport import Transport, build_request
from .types import SessionInfo

log = logging.getLogger(__name__)


class Session:
    def __init__(self, transport: Transport, session_id: str) -> None:
        self._transport = transport
        self._session_id = session_id
        self._final_length: int | None = None
        self._close_lock = asyncio.Lock()

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def is_closed(self) -> bool:
        """True once close() succeeded through this object (the runtime may also drop a session)."""
        return self._final_length is not None

    async def append(self, token_ids: Iterable[int]) -> int:
        """Appends raw token ids and returns the history length. An empty append is a no-op."""
        self._check_open()
        request = build_request(pb.AppendTokensRequest, session_id=self._session_id, token_ids=list(token_ids))
        reply = await self._transport.unary("AppendTokens", request)
        return reply.history_length

    def generate(self, max_tokens: int, *, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, seed: int | None = None,
                 timeout_s: float | None = None, min_tokens_per_message: int = 1) -> GenerationStream:
        """Starts a generation from the history; its tokens join the history as they are sampled.

        Greedy unless temperature > 0; with a seed, sampling is reproducible. Errors the runtime
        finds in the request surface when the stream is read. `timeout_s` bounds the whole call.
        `min_tokens_per_message` K > 1 lets the runtime hold tokens after the first until K are
        ready (or the generation ends): fewer messages, each up to K - 1 decode steps later. For a
        reader that uses the reply whole; at most the client's max_tokens_per_message.
        """
        self._check_open()
        self._transport.check_min_tokens_per_message(min_tokens_per_message)
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed}
        request = build_request(pb.GenerateRequest, session_id=self._session_id, max_tokens=max_tokens,
                                max_tokens_per_message=self._transport.max_tokens_per_message,
                                min_tokens_per_message=min_tokens_per_message,
                                # Unset fields mean the runtime's defaults, so None is never sent as 0.
                                **{name: value for name, value in sampling.items() if value is not None})
        return GenerationStream(self._transport, request, timeout_s)

    async def fork(self, *, label: str | None = None) -> Session:
        """A new session with this one's history and a copy of its KV, ready to append and generate
        at once; the two then go their own ways. Waits for this session's queued work first. The
        fork is a session of its own: close it too."""
        self._check_open()
        fields = {} if label is None else {"client_label": label}
        reply = await self._transport.unary("ForkSession", pb.ForkSessionRequest(session_id=self._session_id,
                                                                                 **fields))
        return Session(self._transport, reply.session_id)

    async def export(self) -> bytes:
        """The session as bytes (its history and KV, with a checksum) for `Client.import_session`,
        on this runtime or another that serves the same model with the same KV settings."""
        self._check_open()
        chunks = await self._transport.download("ExportSession",
                                                pb.ExportSessionRequest(session_id=self._session_id))
        return pack_chunks(chunks)

    async def info(self) -> SessionInfo:
        self._check_open()
        reply = await self._transport.unary("GetSessionInfo", pb.GetSessionInfoRequest(session_id=self._session_id))
        return SessionInfo.from_proto(reply)

    async def close(self) -> int:
        """Closes the session and returns its final history length; a second close makes no RPC."""
        async with self._close_lock:
            if self._final_length is None:
                reply = await self._transport.unary("CloseSession",
                                                    pb.CloseSessionRequest(session_id=self._session_id))
                self._final_length = reply.final_history_length
            return self._final_length

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: object) -> None:
        await close_after(self, exc)

    def _check_open(self) -> None:
        if self._final_length is not None:
            raise SessionClosedError(f"session {self._session_id} was closed")

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<Session {self._session_id} {state}>"


async def close_after(session: Session, exc: BaseException | None) -> None:
    """Closes a session when a block leaves (`async with`, the sync `with`).

    After a block that raised, the block's error is the one that propagates: a close that fails
    too is added to it as a note, never raised in its place. After a block that succeeded, a close
    the runtime cannot take (unavailable: shutting down or gone; or past its deadline) is logged
    as a warning, not raised: a runtime that stops ends its sessions with it, one out of reach
    evicts the session after its TTL, and the block's work is done. Any other close error is
    raised. `session.close()` itself always raises.
    """
    try:
        await session.close()
    except Exception as error:  # noqa: BLE001 - the block's error, or the policy above, decides
        if exc is None:
            if not isinstance(error, (RuntimeUnavailableError, DeadlineExceededError)):
                raise
            log.warning("session %s was not closed: %s", session.session_id, error)
            return
        add_note = getattr(exc, "add_note", None)  # Python 3.11+
        if add_note is not None:
            add_note(f"closing session {session.session_id} then failed too: {type(error).__name__}: {error}")
