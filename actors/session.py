"""The session actor: owns one session's token history and its lease on KV memory.

Accepts: Append, Generate, Close, and Fork, Export, Persist (session_state.py). Messages run one
at a time in arrival order, so a second Generate waits for the first, appends keep their order,
and a fork copies the session as the requests before it left it. With --session-dir, each
request's change is written to the session's file before its reply (session_store.py). Invariants, checked around every
Generate: INV-1 the slab holds exactly the positions this session fed; INV-2 every history
token is either fed or pending (history = fed + pending), so the next position is well defined.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import structlog

from kakeya.runtime.common.errors import InvariantViolation, KakeyaError, KVExhausted, SessionNotFound, Unavailable
from kakeya.runtime.common.metrics import Metrics

from .base import Actor
from .messages import Append, Close, FreeKV, Generate, GenerateParams, Job, KVLease, ReserveKV, SubmitJob
from .scheduler import SchedulerActor
from .session_rules import SessionRules
from .session_state import Export, Fork, Persist, SessionState, copy_state
from .session_store import Journal
from .token_stream import Done, StopReason, TokenStream, Truncated

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """What GetSessionInfo reports; republished by the actor after every change."""

    history_length: int
    pending_tokens: int
    kv_resident_tokens: int
    kv_live_bytes: int  # held for the session = kv_used_bytes + kv_reserved_bytes
    kv_used_bytes: int
    kv_reserved_bytes: int
    inv1_violations: int
    inv2_violations: int

    def with_progress(self, job: Job, num_fed_before: int) -> SessionSnapshot:
        """This snapshot (published as the job was submitted) with the progress the scheduler
        published for the job after its last step."""
        history = self.history_length + len(job.generated)
        return dataclasses.replace(self, history_length=history,
                                   pending_tokens=history - num_fed_before - job.num_fed,
                                   kv_resident_tokens=job.num_resident, kv_used_bytes=job.used_bytes,
                                   kv_reserved_bytes=self.kv_live_bytes - job.used_bytes)


class SessionActor(Actor):
    def __init__(self, session_id: str, client_label: str, eos_token_ids: frozenset[int], rules: SessionRules,
                 scheduler: SchedulerActor, metrics: Metrics, evict_for: Callable[[int, str], Awaitable[None]],
                 on_violation: Callable[[str], None], state: SessionState | None = None) -> None:
        super().__init__(rules.limits.mailbox_size)
        self.name = f"session-{session_id[:8]}"
        self.session_id = session_id
        self.client_label = client_label
        self.eos_token_ids = eos_token_ids
        self._rules = rules
        self._scheduler = scheduler
        self._metrics = metrics
        self._evict_for = evict_for  # frees KV budget by evicting other, idle sessions
        self._on_violation = on_violation
        self._history: list[int] = []
        self._pending: list[int] = []  # the unfed tail of the history
        self._num_fed = 0
        self._lease: KVLease | None = None  # as the scheduler last reported it
        self._reported_dropped = 0
        self._violations = {"inv1": 0, "inv2": 0}
        self._active_stream: TokenStream | None = None
        self._job: Job | None = None  # the running Generate's, while the scheduler holds it
        self.is_closing = False
        self._is_shut_down = False  # closed by the server's drain, not by its client
        self.owner = ""  # the API-key identity that created it; set once by the registry
        self.journal: Journal | None = None  # its durable file (--session-dir); set once by the registry
        self.last_active = time.monotonic()
        if state is not None:  # a fork, an import or a reloaded durable session
            self._seed(state)
        self._published = self._snapshot()

    def _seed(self, state: SessionState) -> None:
        self._history = list(state.history)
        self._num_fed = state.num_fed
        self._pending = self._history[state.num_fed:]
        self._lease = state.lease
        self._reported_dropped = state.reported_dropped

    def state(self) -> SessionState:
        """The history as of the last completed request (the actor's own, between messages)."""
        return SessionState(tuple(self._history), self._num_fed, self._reported_dropped)

    @property
    def snapshot(self) -> SessionSnapshot:
        """What GetSessionInfo reports: the state published after the last change and, while a
        Generate runs, the progress of its job as of the scheduler's last step."""
        if self._job is None:
            return self._published
        return self._published.with_progress(self._job, self._num_fed)

    def closed_error(self) -> Exception:
        if self._is_shut_down:
            return Unavailable("the server is shutting down")
        return SessionNotFound(f"session {self.session_id} is closed")

    @property
    def idle_seconds(self) -> float:
        return 0.0 if not self.is_idle else time.monotonic() - self.last_active

    def begin_close(self, reason: str = "close") -> None:
        """Stops accepting work and cancels a running Generate within one scheduler step. A drain's
        close (reason "shutdown") ends that Generate, and work still queued, with Unavailable: the
        client did not stop them, and another server can take the retry."""
        self.is_closing = True
        self._is_shut_down = self._is_shut_down or reason == "shutdown"
        if self._active_stream is not None:
            self._active_stream.cancel(self.closed_error() if self._is_shut_down else None)

    async def handle(self, message: object) -> None:
        try:
            match message:
                case Append():
                    if self._append(message):
                        await self._persist()
                        if not message.reply.done():  # its caller may have gone meanwhile
                            message.reply.set_result(len(self._history))
                case Generate():
                    await self._generate(message)
                case Close():
                    await self._close(message)
                case Persist():
                    await self._persist()
                    message.reply.set_result(None)
                case Fork() | Export():
                    if self.is_closing:
                        return message.reject(self.closed_error())
                    message.reply.set_result(await copy_state(message, self.state(), self._lease, self._scheduler,
                                                              self._evict_for, self.session_id))
        except Exception as exc:  # one request fails, the session lives on
            log.exception("session_request_failed", session_id=self.session_id)
            message.reject(exc)
        finally:
            self.last_active = time.monotonic()
            self._published = self._snapshot()

    def _append(self, message: Append) -> bool:
        if self.is_closing:
            message.reject(self.closed_error())
            return False
        try:
            self._rules.check_append(len(self._history), message.token_ids)
        except KakeyaError as exc:
            message.reject(exc)
            return False
        self._history.extend(message.token_ids)
        self._pending.extend(message.token_ids)
        return True

    async def _persist(self) -> None:
        """Writes what the last request changed to the session's file before its reply goes out."""
        if self.journal is not None:
            await self.journal.record(self.state(), self._lease)

    async def _generate(self, message: Generate) -> None:
        stream, params = message.stream, message.params
        if self.is_closing:
            return stream.fail(self.closed_error())
        if stream.is_cancelled:
            return stream.push(Done(StopReason.CANCELLED, 0, 0, 0.0, 0.0))
        started = time.monotonic()
        try:
            self._rules.check_generate(len(self._history), params.max_tokens)
            await self._reserve(len(self._history) + params.max_tokens)
            self._check_invariants()  # against the positions the reservation just reported
        except KakeyaError as exc:
            return stream.fail(exc)
        dropped = self._rules.dropped_after_prefill(len(self._history)) - self._reported_dropped
        if dropped > 0:
            self._reported_dropped += dropped
            stream.push(Truncated(dropped))
        prefill_tokens = len(self._pending)
        job = self._job_for(params, stream)
        self._active_stream, self._job = stream, job
        if self.is_closing:
            # A close that came while the reservation was awaited found no stream to cancel yet.
            stream.cancel(self.closed_error() if self._is_shut_down else None)
        self._published = self._snapshot()  # the reservation, before the job's progress is added
        try:
            self._scheduler.send(SubmitJob(job))
            result = await job.done
        except KakeyaError as exc:  # EngineDead or a full scheduler mailbox
            return stream.fail(exc)
        finally:
            self._active_stream, self._job = None, None
        self._lease = result.lease
        self._history.extend(result.generated)
        self._pending = job.inputs[result.num_fed:]
        self._num_fed += result.num_fed
        if result.generated:
            self._metrics.generate_prefill_tokens.observe(prefill_tokens)
            self._metrics.generate_prefill_duration.observe(result.prefill_duration_s)
        try:
            self._check_invariants()
        except InvariantViolation as exc:
            return stream.fail(exc)
        await self._persist()
        stream.push(Done(result.stop_reason, len(result.generated), prefill_tokens,
                         result.prefill_duration_s, time.monotonic() - started,
                         result.num_draft_tokens, result.num_accepted_tokens))

    def _job_for(self, params: GenerateParams, stream: TokenStream) -> Job:
        lease = self._lease
        return Job(kv=lease.kv, inputs=list(self._pending), max_tokens=params.max_tokens,
                   eos_token_ids=self.eos_token_ids, sampling=params.sampling, stream=stream,
                   done=asyncio.get_running_loop().create_future(), num_resident=lease.num_resident,
                   used_bytes=lease.used_bytes)

    async def _reserve(self, total_positions: int) -> None:
        """Makes sure the slab can hold total_positions, evicting idle sessions if the budget is short."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            reply = loop.create_future()
            self._scheduler.send(ReserveKV(self._lease.kv if self._lease else None, total_positions, reply))
            try:
                self._lease = await reply
                return
            except KVExhausted as exc:
                if attempt == 2:
                    raise
                await self._evict_for(exc.needed_bytes, self.session_id)

    def _check_invariants(self) -> None:
        kv_positions = self._lease.num_positions if self._lease is not None else 0
        if kv_positions != self._num_fed:
            self._violate("inv1", f"slab holds {kv_positions} positions, session fed {self._num_fed}")
        if self._num_fed + len(self._pending) != len(self._history):
            self._violate("inv2", f"fed {self._num_fed} + pending {len(self._pending)} != history {len(self._history)}")

    def _violate(self, kind: str, detail: str) -> None:
        self._violations[kind] += 1
        self._on_violation(kind)
        log.error("cache_invariant_violated", session_id=self.session_id, kind=kind, detail=detail)
        self.begin_close()
        raise InvariantViolation(kind, detail)

    async def _close(self, message: Close) -> None:
        self.is_closing = True
        if self._lease is not None:
            reply = asyncio.get_running_loop().create_future()
            try:
                self._scheduler.send(FreeKV(self._lease.kv, reply))
                await reply
            except KakeyaError:
                pass  # the scheduler is gone and its memory with it
            self._lease = None
        if self.journal is not None and not self._is_shut_down:
            await self.journal.remove()  # a shutdown keeps the file for the next start
        log.info("session_closed", session_id=self.session_id, reason=message.reason,
                 history_tokens=len(self._history))
        message.reply.set_result(len(self._history))

    def _snapshot(self) -> SessionSnapshot:
        lease = self._lease
        live, used = (lease.lease_bytes, lease.used_bytes) if lease is not None else (0, 0)
        return SessionSnapshot(
            history_length=len(self._history),
            pending_tokens=len(self._pending),
            kv_resident_tokens=lease.num_resident if lease is not None else 0,
            kv_live_bytes=live,
            kv_used_bytes=used,
            kv_reserved_bytes=live - used,
            inv1_violations=self._violations["inv1"],
            inv2_violations=self._violations["inv2"],
        )
