"""The session registry: the only writer of the id -> session map; creates, finds and evicts sessions.

Evicts idle sessions by TTL (a timer task that really runs) and by least-recent use when the
session count or the KV budget is full. A session with queued or running work is never idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
from typing import AsyncIterator

import structlog

from kakeya.runtime.common.errors import KVExhausted, Overloaded, SessionNotFound
from kakeya.runtime.common.metrics import Metrics
from kakeya.runtime.engine.session_snapshot import KVImage

from .messages import Close
from .scheduler import SchedulerActor
from .session import SessionActor
from .session_state import Fork, Persist, SessionState, empty_image, import_lease
from .session_store import Restored, SessionStore
from .session_rules import SessionRules

log = structlog.get_logger(__name__)

_OUTCOMES = {"close": "closed", "shutdown": "closed", "failed": "failed"}


class SessionRegistry:
    def __init__(self, rules: SessionRules, scheduler: SchedulerActor, metrics: Metrics,
                 store: SessionStore | None = None) -> None:
        self._rules = rules
        self._store = store
        self._scheduler = scheduler
        self._metrics = metrics
        self._sessions: dict[str, SessionActor] = {}
        self._create_lock = asyncio.Lock()
        self._making = 0  # sessions being made (a fork or import awaiting its state), counted as active
        self._reaper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[int]] = set()
        self._violations: dict[str, int] = {}  # by kind; the Prometheus counter holds the same

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_expired(), name="session-reaper")

    @property
    def num_active(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str, owner: str | None = None) -> SessionActor:
        """The session, if it exists and (when owner is given) belongs to that owner.

        Another owner's session answers exactly like a missing one, so ids cannot be probed.
        """
        session = self._sessions.get(session_id)
        if session is None or (owner is not None and session.owner != owner):
            # Echo at most a prefix: the message travels in metadata, which has a size limit.
            shown = session_id if len(session_id) <= 64 else session_id[:32] + "..."
            raise SessionNotFound(f"no session {shown!r} (unknown, closed or evicted)")
        return session

    def owned_by(self, owner: str) -> list[SessionActor]:
        """The sessions created by this owner, oldest first (with no API keys every caller is one owner)."""
        return [session for session in self._sessions.values() if session.owner == owner]

    async def create(self, client_label: str, eos_token_ids: frozenset[int], owner: str = "") -> str:
        async with self._slot(exclude=None):
            session_id = await self._persisted(self._add(client_label, eos_token_ids, owner, None))
        log.info("session_created", session_id=session_id, client_label=client_label)
        return session_id

    async def fork(self, session_id: str, owner: str, client_label: str | None = None) -> str:
        """A new session with the source's history and a copy of its KV. The source answers in its
        mailbox order (after a running Generate); the fork counts against the limits like any session."""
        source = self.get(session_id, owner)
        async with self._slot(exclude=session_id):
            reply = asyncio.get_running_loop().create_future()
            source.send(Fork(reply))
            state = await reply
            label = source.client_label if client_label is None else client_label
            new_id = await self._persisted(self._add(label, source.eos_token_ids, owner, state))
        log.info("session_forked", session_id=new_id, source_session_id=session_id,
                 history_tokens=len(state.history))
        return new_id

    async def adopt(self, state: SessionState, image: KVImage, client_label: str, eos_token_ids: frozenset[int],
                    owner: str, session_id: str | None = None) -> str:
        """A session made from an exported or durable state: its slab is written from the image."""
        restoring = session_id is not None  # at start: never evict another restored session (and its file)
        async with self._slot(exclude=None, evict=not restoring):
            lease = await import_lease(image, state.history, self._scheduler, None if restoring else self.evict_for)
            state = dataclasses.replace(state, lease=lease)
            new_id = self._add(client_label, eos_token_ids, owner, state, session_id)
            if session_id is None:
                await self._persisted(new_id)
        log.info("session_imported", session_id=new_id, history_tokens=len(state.history))
        return new_id

    async def _persisted(self, session_id: str) -> str:
        """The new session's id once its state is in its file (with --session-dir)."""
        session = self._sessions.get(session_id)
        if session is not None and session.journal is not None:
            reply = asyncio.get_running_loop().create_future()
            await session.send_wait(Persist(reply))
            await reply
        return session_id

    async def restore(self) -> int:
        """Brings back every session of the durable directory under its id (at start, before serving).
        Its KV is reloaded; a session whose KV no longer fits the budget keeps its history, to be
        prefilled again at its next Generate. Returns how many came back."""
        if self._store is None:
            return 0
        for got in await asyncio.to_thread(self._store.load_all):
            try:
                await self._restore_one(got)
            except Overloaded as exc:
                log.error("session_not_restored", session_id=got.session_id, reason=str(exc))
        return len(self._sessions)

    async def _restore_one(self, got: Restored) -> None:
        try:
            await self.adopt(got.state, got.image, got.client_label, got.eos_token_ids, got.owner, got.session_id)
        except KVExhausted:
            state = dataclasses.replace(got.state, num_fed=0)
            await self.adopt(state, empty_image(self._rules.sink_tokens), got.client_label, got.eos_token_ids,
                             got.owner, got.session_id)
            return  # its file no longer matches: the next request rewrites it
        self._sessions[got.session_id].journal.resume(got.state, got.image)

    @contextlib.asynccontextmanager
    async def _slot(self, exclude: str | None, evict: bool = True) -> AsyncIterator[None]:
        """Holds room for one more session (evicting the least recently used idle one if needed)
        while it is being made; a fork's wait for its source does not hold up other creations."""
        async with self._create_lock:
            if len(self._sessions) + self._making >= self._rules.limits.max_sessions \
                    and not (evict and await self._evict_lru(exclude=exclude)):
                raise Overloaded(f"all {self._rules.limits.max_sessions} sessions are busy; none is idle to evict")
            self._making += 1
        try:
            yield
        finally:
            self._making -= 1

    def _add(self, client_label: str, eos_token_ids: frozenset[int], owner: str, state: SessionState | None,
             session_id: str | None = None) -> str:
        session_id = session_id or secrets.token_hex(16)  # 128 random bits
        session = SessionActor(session_id, client_label, eos_token_ids, self._rules, self._scheduler,
                               self._metrics, self.evict_for,
                               lambda kind, sid=session_id: self._on_violation(sid, kind), state)
        session.owner = owner
        if self._store is not None:
            session.journal = self._store.journal(session_id, owner, client_label, eos_token_ids)
        session.start()
        self._sessions[session_id] = session
        self._metrics.session_active.set(len(self._sessions))
        return session_id

    async def close(self, session_id: str, reason: str = "close", owner: str | None = None) -> int:
        """Removes the session at once (later calls get NOT_FOUND), then frees it in order."""
        self.get(session_id, owner)
        session = self._sessions.pop(session_id)
        self._metrics.session_active.set(len(self._sessions))
        session.begin_close(reason)
        reply = asyncio.get_running_loop().create_future()
        try:
            # Close must always land: wait for mailbox room, which begin_close frees quickly.
            await session.send_wait(Close(reason, reply))
            final_length = await reply
        except SessionNotFound:  # the actor already ended (it crashed): nothing left to free
            final_length = session.snapshot.history_length
        await session.stop()
        self._metrics.session_total.labels(_OUTCOMES.get(reason, "evicted")).inc()
        if reason in ("ttl", "lru"):  # a client's close, a failure or a shutdown is no eviction
            self._metrics.session_evicted.labels(reason).inc()
        self._metrics.session_history_tokens.observe(final_length)
        return final_length

    async def evict_for(self, kv_bytes: int, exclude: str) -> None:
        """Evicts idle sessions, least recently used first, until kv_bytes of the KV budget are free."""
        while self._scheduler.kv_free_bytes < kv_bytes:
            if not await self._evict_lru(exclude=exclude):
                return

    async def _evict_lru(self, exclude: str | None) -> bool:
        idle = [s for s in self._sessions.values() if s.is_idle and s.session_id != exclude]
        if not idle:
            return False
        victim = min(idle, key=lambda s: s.last_active)
        log.info("session_evicted", session_id=victim.session_id, reason="lru")
        await self.close(victim.session_id, reason="lru")
        return True

    async def _reap_expired(self) -> None:
        ttl = self._rules.limits.session_ttl_s
        while True:
            await asyncio.sleep(min(max(ttl / 4, 0.05), 5.0))
            for session in list(self._sessions.values()):
                if session.idle_seconds > ttl and session.session_id in self._sessions:
                    log.info("session_evicted", session_id=session.session_id, reason="ttl")
                    await self.close(session.session_id, reason="ttl")

    def violations(self, kind: str) -> int:
        """Cache invariant violations of this kind so far (GetRuntimeInfo reads it, cheaply)."""
        return self._violations.get(kind, 0)

    def _on_violation(self, session_id: str, kind: str) -> None:
        self._metrics.invariant_violations.labels(kind).inc()
        self._violations[kind] = self._violations.get(kind, 0) + 1
        if session_id in self._sessions:
            task = asyncio.get_running_loop().create_task(self.close(session_id, reason="failed"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Waits (bounded) until no session has queued or running work; True if they all did."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(not s.is_idle for s in self._sessions.values()):
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.05)  # shutdown path only: a short poll beats wiring an event per session
        return True

    async def close_all(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.wait({self._reaper})
        for session_id in list(self._sessions):
            await self.close(session_id, reason="shutdown")
        if self._closing:
            await asyncio.wait(self._closing)
