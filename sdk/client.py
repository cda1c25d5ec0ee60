"""The asyncio client: one connection to a runtime, and the factory of sessions on it."""

from __future__ import annotations

import contextlib
import os
from typing import AsyncIterator, Iterable

from kakeya.proto.v1 import runtime_pb2 as pb

from .blob import unpack_chunks
from .session import Session, close_after
from .transport import Transport, build_request, read_root_certificates
from .types import RuntimeInfo, SessionSummary

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 30.0
# A reader that falls behind (many streams in one process) catches up in fewer messages.
DEFAULT_TOKENS_PER_MESSAGE = 64


class Client:
    """A connection to one runtime at `address` ("host:port" or "unix:/path").

    `api_key`, when given, is sent as `authorization: Bearer <key>` on every call. Unary calls
    carry a deadline of `timeout_s` (None: none). Closing the client does not close its
    sessions: they live in the runtime until closed or evicted.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, api_key: str | None = None,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S, tls: bool = False,
                 root_certificates: bytes | str | os.PathLike | None = None,
                 max_tokens_per_message: int = DEFAULT_TOKENS_PER_MESSAGE) -> None:
        """`tls=True` (or a `root_certificates` PEM, as bytes or a file path) opens a TLS channel;
        without root_certificates the system's trust roots verify the server.
        `max_tokens_per_message`: tokens sampled while this client was behind in reading a
        generation may come up to this many a message (1: one a message, as the first runtime
        sent them). Iterating a generation yields single token ids either way."""
        self._transport = Transport(address, api_key, timeout_s, tls, read_root_certificates(root_certificates),
                                    max_tokens_per_message)

    @property
    def address(self) -> str:
        return self._transport.address

    @property
    def timeout_s(self) -> float | None:
        return self._transport.timeout_s

    @property
    def is_closed(self) -> bool:
        return self._transport.is_closed

    async def create_session(self, *, eos_token_ids: Iterable[int] = (), initial_tokens: Iterable[int] = (),
                             label: str = "", default_eos: bool = True) -> Session:
        """Opens a session; `initial_tokens` are appended. Generation stops after any of
        `eos_token_ids`; without them, after the model's own EOS ids (RuntimeInfo's
        default_eos_token_ids), or never with `default_eos=False` (generations run to max_tokens)."""
        request = build_request(pb.CreateSessionRequest, client_label=label, eos_token_ids=list(eos_token_ids),
                                no_default_eos=not default_eos)
        reply = await self._transport.unary("CreateSession", request)
        session = Session(self._transport, reply.session_id)
        initial_tokens = list(initial_tokens)
        if initial_tokens:
            # A session whose first append failed is of no use to the caller: don't leak it.
            try:
                await session.append(initial_tokens)
            except BaseException as exc:
                await close_after(session, exc)
                raise
        return session

    @contextlib.asynccontextmanager
    async def session(self, *, eos_token_ids: Iterable[int] = (), initial_tokens: Iterable[int] = (),
                      label: str = "", default_eos: bool = True) -> AsyncIterator[Session]:
        """`async with client.session(...) as s:` closes the session when the block leaves; an
        error from the close never replaces the block's own (see `close_after`)."""
        session = await self.create_session(eos_token_ids=eos_token_ids, initial_tokens=initial_tokens,
                                            label=label, default_eos=default_eos)
        try:
            yield session
        except BaseException as exc:
            await close_after(session, exc)
            raise
        await close_after(session, None)

    def attach_session(self, session_id: str) -> Session:
        """A handle on an existing session, e.g. one created by an earlier connection. No RPC is made."""
        return Session(self._transport, session_id)

    async def import_session(self, exported: bytes) -> Session:
        """Recreates a session from `Session.export()`'s bytes under a new id. A different model or
        KV settings fail with FailedPreconditionError; damaged bytes with InvalidArgumentError."""
        reply = await self._transport.upload("ImportSession", unpack_chunks(exported))
        return Session(self._transport, reply.session_id)

    async def runtime_info(self) -> RuntimeInfo:
        return RuntimeInfo.from_proto(await self._transport.unary("GetRuntimeInfo", pb.GetRuntimeInfoRequest()))

    async def list_sessions(self) -> list[SessionSummary]:
        """The sessions this client's API key created (every session when the runtime has no keys),
        oldest first, whichever connection created them."""
        reply = await self._transport.unary("ListSessions", pb.ListSessionsRequest())
        return [SessionSummary.from_proto(entry) for entry in reply.sessions]

    async def close(self) -> None:
        """Closes the connection; calls in flight are cancelled. Closing twice is harmless."""
        await self._transport.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Client {self.address}{' closed' if self.is_closed else ''}>"
