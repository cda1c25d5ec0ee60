"""Resident sessions for stateless clients: a request whose tokens extend an idle session's history
reuses that session and appends only the new tokens.

The index maps a digest of (API key, EOS ids, history) to a session. A lookup hashes the prefixes
of the new tokens at the lengths the index holds, in one pass, longest match first, and checks the
match token for token. A session is in the index only while no HTTP request holds it; a request
takes it out, and puts it back with its new history only after a generation that ended cleanly
(EOS or the token limit). Any other end closes the session: its history then holds tokens the
client never saw, so no later rendering could extend it.
"""

from __future__ import annotations

import asyncio
import hashlib
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import structlog

from kakeya.runtime.common.errors import SessionNotFound

if TYPE_CHECKING:
    from kakeya.actors.registry import SessionRegistry
    from kakeya.actors.session import SessionActor

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Lease:
    """A session held by one HTTP request, and the history it holds as far as this layer knows."""

    session: "SessionActor"
    owner: str
    eos_token_ids: frozenset[int]
    history: list[int] = field(default_factory=list)
    reused_tokens: int = 0  # of the request's tokens, those already resident


@dataclass(frozen=True, slots=True)
class _Entry:
    session_id: str
    namespace: bytes
    history: array  # 32-bit token ids: the index holds every resident history once


def _namespace(owner: str, eos_token_ids: frozenset[int]) -> bytes:
    return f"{owner}|{','.join(map(str, sorted(eos_token_ids)))}|".encode()


class ResidentSessions:
    def __init__(self, registry: "SessionRegistry", reuse: bool = True) -> None:
        self._registry = registry
        self._reuse = reuse
        self._by_digest: dict[bytes, _Entry] = {}
        self._by_session: dict[str, _Entry] = {}
        self._lengths: dict[bytes, dict[int, int]] = {}  # namespace -> history length -> entries
        self._closing: set[asyncio.Task] = set()

    def num_indexed(self) -> int:
        """Sessions that a request could extend now (entries of evicted sessions dropped first)."""
        self._prune()
        return len(self._by_session)

    async def acquire(self, owner: str, eos_token_ids: frozenset[int], tokens: Sequence[int]) -> Lease:
        """An idle session whose history is a strict prefix of `tokens`, or a new empty one."""
        namespace = _namespace(owner, eos_token_ids)
        for entry in self._matches(namespace, tokens):
            session = self._take(entry)
            if session is not None:
                return Lease(session, owner, eos_token_ids, list(entry.history), len(entry.history))
        return await self.create(owner, eos_token_ids)

    async def create(self, owner: str, eos_token_ids: frozenset[int]) -> Lease:
        session_id = await self._registry.create(client_label="http", eos_token_ids=eos_token_ids, owner=owner)
        return Lease(self._registry.get(session_id, owner), owner, eos_token_ids)

    def acquire_exact(self, owner: str, eos_token_ids: frozenset[int], session_id: str,
                      history: Sequence[int]) -> "SessionActor | None":
        """That session if it is idle and holds exactly `history`, else an idle one of the same
        owner that holds the same ids (they are the same conversation, token for token)."""
        wanted = array("i", history)
        entry = self._by_session.get(session_id)
        if entry is None or entry.history != wanted:
            entry = self._by_digest.get(_digest(_namespace(owner, eos_token_ids), wanted))
        return self._take(entry) if entry is not None and entry.history == wanted else None

    def release(self, lease: Lease, reusable: bool) -> None:
        """Back into the index (a clean end), or closed (anything else). Never awaits: it runs in
        `finally` blocks of requests whose client may be gone."""
        if reusable and self._reuse and not lease.session.is_closing and lease.history:
            self._prune()
            replaced = self._put(_Entry(lease.session.session_id, _namespace(lease.owner, lease.eos_token_ids),
                                        array("i", lease.history)))
            if replaced is not None:  # the same tokens resident twice: the older copy only costs memory
                self._close_later(replaced, lease.owner)
            return
        self._close_later(lease.session.session_id, lease.owner)

    def _close_later(self, session_id: str, owner: str) -> None:
        task = asyncio.get_running_loop().create_task(self._close(session_id, owner))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def wait_closed(self) -> None:
        if self._closing:
            await asyncio.wait(set(self._closing))

    def _matches(self, namespace: bytes, tokens: Sequence[int]) -> list[_Entry]:
        lengths = sorted(n for n in self._lengths.get(namespace, {}) if n < len(tokens))
        if not lengths:
            return []
        hasher, found, done = hashlib.blake2b(namespace, digest_size=16), [], 0
        data = array("i", tokens)
        for length in lengths:
            hasher.update(data[done:length].tobytes())
            done = length
            entry = self._by_digest.get(hasher.copy().digest())
            if entry is not None and entry.history == data[:length]:
                found.append(entry)
        return found[::-1]

    def _take(self, entry: _Entry) -> "SessionActor | None":
        self._remove(entry)
        try:
            session = self._registry.get(entry.session_id)
        except SessionNotFound:
            return None  # evicted since it was indexed
        return session if session.is_idle and not session.is_closing else None

    def _put(self, entry: _Entry) -> str | None:
        """Indexes the entry; returns the id of a session it displaced (one with the same history)."""
        old = self._by_session.get(entry.session_id)
        if old is not None:
            self._remove(old)
        digest = _digest(entry.namespace, entry.history)
        replaced = self._by_digest.get(digest)
        if replaced is not None:
            self._remove(replaced)
        self._by_digest[digest] = entry
        self._by_session[entry.session_id] = entry
        counts = self._lengths.setdefault(entry.namespace, {})
        counts[len(entry.history)] = counts.get(len(entry.history), 0) + 1
        return replaced.session_id if replaced is not None else None

    def _remove(self, entry: _Entry) -> None:
        if self._by_session.get(entry.session_id) is not entry:
            return
        del self._by_session[entry.session_id]
        self._by_digest.pop(_digest(entry.namespace, entry.history), None)
        counts = self._lengths[entry.namespace]
        counts[len(entry.history)] -= 1
        if not counts[len(entry.history)]:
            del counts[len(entry.history)]
            if not counts:
                del self._lengths[entry.namespace]

    def _prune(self) -> None:
        """Drops entries of sessions the registry evicted (TTL, LRU); they are never looked up again."""
        for entry in list(self._by_session.values()):
            try:
                self._registry.get(entry.session_id)
            except SessionNotFound:
                self._remove(entry)

    async def _close(self, session_id: str, owner: str) -> None:
        try:
            await self._registry.close(session_id, owner=owner)
        except SessionNotFound:
            pass  # evicted or closed already


def _digest(namespace: bytes, history: array) -> bytes:
    return hashlib.blake2b(namespace + history.tobytes(), digest_size=16).digest()
