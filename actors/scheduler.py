"""The scheduler actor: pools every session's pending rows into one forward per step.

Accepts: ReserveKV, FreeKV (KV memory, which it owns through the pool) and SubmitJob (a
Generate's work). Each step it hands the engine one StepRequest and gets one StepResult back;
it alone pushes tokens into token streams. When a job ends it trims the session's slab to what
the session holds, so a reservation for max_tokens that went unused is given back at once.
Invariants: the model thread runs at most one step at a time, and KV slabs are resized or freed
only between steps, never while the model thread uses them; after every step each slab holds
exactly the tokens its session committed (the engine rolls back rejected draft rows and rows past
a stop).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import structlog

from kakeya.runtime.common.errors import EngineDead, KakeyaError, KVExhausted
from kakeya.runtime.common.metrics import Metrics
from kakeya.runtime.engine.engine import Engine
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.engine.sampler import Sampler
from kakeya.runtime.engine.step import RowResult, RowStop
from kakeya.runtime.forward.session_kv import SessionKV

from .base import Actor
from .batch_policy import Slice, plan_step
from .messages import FreeKV, Job, JobResult, KVLease, ReserveKV, SlabOp, SubmitJob
from .speculator import Speculator
from .step_stats import StepRecorder
from .token_stream import StopReason

log = structlog.get_logger(__name__)

_STOP_REASONS = {RowStop.EOS: StopReason.EOS, RowStop.MAX_TOKENS: StopReason.MAX_TOKENS}


class SchedulerActor(Actor):
    name = "scheduler"

    def __init__(self, engine: Engine, speculator: Speculator, pool: KVPool, metrics: Metrics, chunk_tokens: int,
                 max_step_tokens: int, mailbox_size: int, consumer_stall_s: float = 60.0,
                 on_crash: Callable[[BaseException], None] | None = None) -> None:
        super().__init__(mailbox_size, on_crash)
        self._consumer_stall_s = consumer_stall_s
        self._metrics = metrics
        self._engine = engine
        self._speculator = speculator
        self.pool = pool
        self._chunk_tokens = chunk_tokens
        self._max_step_tokens = max_step_tokens
        self._running: list[Job] = []
        self._samplers: dict[int, Sampler] = {}
        self._recorder = StepRecorder(metrics, pool)
        self.stats = self._recorder.stats
        self.last_tick = time.monotonic()

    def closed_error(self) -> Exception:
        return EngineDead("the scheduler has stopped")

    @property
    def num_running(self) -> int:
        return len(self._running)

    def is_stalled(self, stall_s: float) -> bool:
        """True when work is waiting and the loop has not finished a step for stall_s."""
        has_work = bool(self._running) or not self._mailbox.empty()
        return has_work and time.monotonic() - self.last_tick > stall_s

    async def run_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # 1. Take input: block only when nothing is running.
            self.last_tick = time.monotonic()
            if not self._running:
                self._recorder.idle()
            # Never block once stopping: the stop marker may have been taken while jobs ran.
            message = await self.next_message(block=not self._running and not self.is_stopping)
            self.last_tick = time.monotonic()  # an idle wait is not a stall
            while message is not None:
                self._accept(message)
                message = await self.next_message(block=False)
            if self.is_stopping and not self._running:
                return
            # 2. Drop jobs whose consumer went away or stopped reading, before spending a forward on them.
            self._finish_cancelled()
            if not self._running:
                continue
            # 3. Schedule.
            slices = plan_step(self._running, self._chunk_tokens, self._max_step_tokens,
                               self._speculator.draft_rows)
            request = self._speculator.plan(slices, self._samplers)
            # 4. Run the step (drafts first, if a draft model proposes) on the model thread;
            # the event loop stays free meanwhile.
            started = time.monotonic()
            try:
                result = await loop.run_in_executor(self._engine.executor, self._engine.step, request)
            except Exception as exc:
                self._fail_all(EngineDead(f"the model thread failed: {exc!r}"))
                raise
            self._recorder.step(slices, self._running, time.monotonic() - started)
            # 5. Publish: push each row's tokens, finish jobs that hit a stop.
            self._recorder.tokens(sum(self._commit(piece, row) for piece, row in zip(slices, result.rows)))

    def _accept(self, message: object) -> None:
        match message:
            case ReserveKV(kv=kv, total_positions=total, reply=reply):
                lease = kv if kv is not None else self.pool.allocate()
                try:
                    self.pool.reserve(lease, total)
                    reply.set_result(self._lease(lease))
                except KVExhausted as exc:
                    if kv is None:
                        self.pool.free(lease)  # the session never got the handle
                    reply.set_exception(exc)
                self._recorder.memory()
            case FreeKV(kv=kv, reply=reply):
                self.pool.free(kv)
                self._speculator.forget(kv)
                reply.set_result(None)
                self._recorder.memory()
            case SlabOp():
                self._slab_op(message)
            case SubmitJob(job=job):
                job.submitted_at = time.monotonic()
                job.num_prompt = len(job.inputs)
                self._samplers[id(job)] = Sampler(job.sampling)
                self._running.append(job)
            case _:
                raise TypeError(f"scheduler got an unknown message {message!r}")

    def _slab_op(self, message: SlabOp) -> None:
        """A fork, import or read-out of a session's slab, between steps like every slab change."""
        try:
            result = self.pool.on_model_thread(lambda: message.apply(self.pool))
        except Exception as exc:  # noqa: BLE001 - the asker's request fails; the pool is as it was
            if not isinstance(exc, KakeyaError):
                log.exception("slab_op_failed")
            return message.reject(exc)
        if isinstance(result, SessionKV):
            if message.reply.done():  # its asker is gone: the new slab would have no owner
                self.pool.free(result)
                return
            self._speculator.adopt(result, message.fed_tokens)
            result = self._lease(result)
        if not message.reply.done():
            message.reply.set_result(result)
        self._recorder.memory()

    @staticmethod
    def _lease(kv: SessionKV) -> KVLease:
        return KVLease(kv, kv.num_positions, kv.num_resident, kv.lease_bytes, kv.used_bytes)

    @property
    def kv_free_bytes(self) -> int:
        """Free bytes of the KV budget; changes only when this actor handles a message."""
        return self.pool.free_bytes

    def _commit(self, piece: Slice, row: RowResult) -> int:
        """Pushes the row's tokens to the job's stream and finishes the job at its stop. Returns
        how many tokens the row emitted."""
        job = piece.job
        # Every token but the last was fed in this step (accepted draft rows); the last is
        # pending, as a plain decode step's sampled token is.
        tokens = row.tokens
        job.num_fed = piece.stop + len(tokens) - 1 if tokens else piece.stop
        now = time.monotonic()
        token_at, push = self._recorder.token, job.stream.push
        for token in tokens:
            token_at(job, now)
            push(token)
        job.generated += tokens
        job.inputs += tokens
        kv = job.kv  # progress, for the session's snapshot
        job.num_resident = resident = kv.num_resident
        job.used_bytes = resident * kv.bytes_per_token if kv.draft is None else kv.used_bytes
        if self._speculator.mode != "none":
            self._speculator.commit(piece, row)
        if row.stop is not None:
            self._finish(job, _STOP_REASONS[row.stop])
        return len(row.tokens)

    def _finish_cancelled(self) -> None:
        for job in list(self._running):
            if job.stream.is_stalled(self._consumer_stall_s):
                log.warning("consumer_stalled", kv_id=job.kv.kv_id, unread_s=self._consumer_stall_s)
                self._metrics.stalled_consumers.inc()
                job.stream.cancel()
            if job.stream.is_cancelled:
                self._finish(job, StopReason.CANCELLED)

    def _finish(self, job: Job, reason: StopReason) -> None:
        """Between steps: ends the job, trims its slab to the session's history (the positions fed
        and the inputs still pending), and reports the lease with the result."""
        self._running.remove(job)
        self._samplers.pop(id(job), None)
        self.pool.trim(job.kv, job.kv.num_positions + len(job.inputs) - job.num_fed)
        self._recorder.memory()
        first = job.first_token_at or time.monotonic()
        if not job.done.done():
            job.done.set_result(JobResult(tuple(job.generated), job.num_fed, reason, first - job.submitted_at,
                                          self._lease(job.kv), job.num_draft_tokens, job.num_accepted_tokens))

    def _fail_all(self, error: Exception) -> None:
        for job in self._running:
            job.reject(error)
        self._running.clear()
        self._samplers.clear()
