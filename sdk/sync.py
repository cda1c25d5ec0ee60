"""The blocking facade for scripts and notebooks: the async client, driven on a private loop thread.

Same surface as the async API without `await`; each call blocks until its RPC is done.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import AsyncIterator, Iterable, Iterator

from .client import DEFAULT_ADDRESS, DEFAULT_TIMEOUT_S, DEFAULT_TOKENS_PER_MESSAGE, Client
from .loop_thread import LoopThread
from .session import Session, close_after
from .stream import GenerationStream
from .types import RuntimeInfo, SessionInfo, SessionSummary, StopReason


class SyncClient:
    """`with SyncClient(address) as client:` — see Client for the arguments."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, api_key: str | None = None,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S, tls: bool = False,
                 root_certificates: bytes | str | os.PathLike | None = None,
                 max_tokens_per_message: int = DEFAULT_TOKENS_PER_MESSAGE) -> None:
        self._client = Client(address, api_key=api_key, timeout_s=timeout_s, tls=tls,
                              root_certificates=root_certificates, max_tokens_per_message=max_tokens_per_message)
        self._loop = LoopThread()
        # Stops the thread even if close() is never called (at garbage collection or exit).
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._client)

    @property
    def address(self) -> str:
        return self._client.address

    @property
    def is_closed(self) -> bool:
        return not self._finalizer.alive

    def create_session(self, *, eos_token_ids: Iterable[int] = (), initial_tokens: Iterable[int] = (),
                       label: str = "", default_eos: bool = True) -> SyncSession:
        session = self._loop.run(self._client.create_session(
            eos_token_ids=list(eos_token_ids), initial_tokens=list(initial_tokens), label=label,
            default_eos=default_eos))
        return SyncSession(self._loop, session)

    @contextlib.contextmanager
    def session(self, *, eos_token_ids: Iterable[int] = (), initial_tokens: Iterable[int] = (),
                label: str = "", default_eos: bool = True) -> Iterator[SyncSession]:
        """`with client.session(...) as s:` closes the session when the block leaves."""
        with self.create_session(eos_token_ids=eos_token_ids, initial_tokens=initial_tokens, label=label,
                                 default_eos=default_eos) as s:
            yield s

    def attach_session(self, session_id: str) -> SyncSession:
        return SyncSession(self._loop, self._client.attach_session(session_id))

    def import_session(self, exported: bytes) -> SyncSession:
        return SyncSession(self._loop, self._loop.run(self._client.import_session(exported)))

    def runtime_info(self) -> RuntimeInfo:
        return self._loop.run(self._client.runtime_info())

    def list_sessions(self) -> list[SessionSummary]:
        return self._loop.run(self._client.list_sessions())

    def close(self) -> None:
        """Closes the connection and stops the loop thread. Closing twice is harmless."""
        self._finalizer()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncClient {self.address}{' closed' if self.is_closed else ''}>"


class SyncSession:
    def __init__(self, loop: LoopThread, session: Session) -> None:
        self._loop = loop
        self._session = session

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def is_closed(self) -> bool:
        return self._session.is_closed

    def append(self, token_ids: Iterable[int]) -> int:
        return self._loop.run(self._session.append(list(token_ids)))

    def generate(self, max_tokens: int, *, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, seed: int | None = None,
                 timeout_s: float | None = None, min_tokens_per_message: int = 1) -> SyncGenerationStream:
        # The call object must be made on the loop that will read it.
        stream = self._loop.call(self._session.generate, max_tokens, temperature=temperature, top_p=top_p,
                                 top_k=top_k, seed=seed, timeout_s=timeout_s,
                                 min_tokens_per_message=min_tokens_per_message)
        return SyncGenerationStream(self._loop, stream)

    def fork(self, *, label: str | None = None) -> SyncSession:
        return SyncSession(self._loop, self._loop.run(self._session.fork(label=label)))

    def export(self) -> bytes:
        return self._loop.run(self._session.export())

    def info(self) -> SessionInfo:
        return self._loop.run(self._session.info())

    def close(self) -> int:
        return self._loop.run(self._session.close())

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: object) -> None:
        # The async `async with`'s rules (close_after); a client closed in the block can't run them.
        if exc is None:
            self._loop.run(close_after(self._session, None))
            return
        with contextlib.suppress(Exception):  # the block's own error is the one that propagates
            self._loop.run(close_after(self._session, exc))

    def __repr__(self) -> str:
        return f"<SyncSession {self.session_id} {'closed' if self.is_closed else 'open'}>"


class SyncGenerationStream:
    """`for token_id in stream:`; leaving the loop early cancels the generation, as in the async API."""

    def __init__(self, loop: LoopThread, stream: GenerationStream) -> None:
        self._loop = loop
        self._stream = stream

    def __iter__(self) -> Iterator[int]:
        iterator = self._loop.call(self._stream.__aiter__)
        try:
            while True:
                has_token, token = self._loop.run(_next(iterator))
                if not has_token:
                    return
                yield token
        finally:
            # Cancelled on the loop, so that the iterator dropped here afterwards finds nothing left to cancel.
            self.cancel()

    def collect(self) -> list[int]:
        return self._loop.run(self._stream.collect())

    def cancel(self) -> None:
        if not self._loop.is_closed:
            self._loop.call(self._stream.cancel)

    def __enter__(self) -> SyncGenerationStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    @property
    def stop_reason(self) -> StopReason | None:
        return self._stream.stop_reason

    @property
    def generated_token_count(self) -> int:
        return self._stream.generated_token_count

    @property
    def prefill_token_count(self) -> int:
        return self._stream.prefill_token_count

    @property
    def prefill_duration_s(self) -> float:
        return self._stream.prefill_duration_s

    @property
    def total_duration_s(self) -> float:
        return self._stream.total_duration_s

    @property
    def dropped_token_count(self) -> int:
        return self._stream.dropped_token_count

    @property
    def is_done(self) -> bool:
        return self._stream.is_done


async def _next(iterator: AsyncIterator[int]) -> tuple[bool, int]:
    # The end of the stream is an ordinary outcome: it comes back as a flag, not as an exception.
    try:
        return True, await iterator.__anext__()
    except StopAsyncIteration:
        return False, 0


def _shutdown(loop: LoopThread, client: Client) -> None:
    try:
        if not loop.is_current:
            loop.run(client.close())
    finally:
        loop.stop()
