"""The scheduler actor: pools every session's pending rows into one forward per step.

Accepts: AllocateKV, ReserveKV, FreeKV (KV memory, which it owns through the pool) and
SubmitJob (a Generate's work). Invariants: the model thread runs at most one step at a time,
and KV slabs are resized or freed only between steps, never while the model thread uses them;
after every step each slab holds exactly the tokens its session committed (speculative rows
that were rejected, or cut by a stop condition, are rolled back).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import structlog

from kakeya.runtime.common.errors import EngineDead, Overloaded
from kakeya.runtime.forward.session_kv import KVPool
from kakeya.runtime.common.metrics import Metrics
from kakeya.runtime.engine.sampler import Sampler

from .base import Actor
from .batch_policy import Slice, plan_step
from .messages import AllocateKV, FreeKV, Job, JobResult, ReserveKV, SubmitJob
from .speculator import Speculator
from .step_stats import StepRecorder
from .token_stream import StopReason

log = structlog.get_logger(__name__)


class SchedulerActor(Actor):
    name = "scheduler"

    def __init__(self, speculator: Speculator, pool: KVPool, metrics: Metrics, chunk_tokens: int,
                 max_step_tokens: int, mailbox_size: int, consumer_stall_s: float = 60.0,
                 on_crash: Callable[[BaseException], None] | None = None) -> None:
        super().__init__(mailbox_size, on_crash)
        self._consumer_stall_s = consumer_stall_s
        self._metrics = metrics
        self._speculator = speculator
        self._executor = speculator.executor
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
            message = await self.next_message(block=not self._running)
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
            plan = self._speculator.plan(slices, self._samplers)
            # 4. Run the forward (drafts first, if a draft model proposes) on the model thread;
            # the event loop stays free meanwhile.
            started = time.monotonic()
            try:
                emitted = await loop.run_in_executor(self._executor, self._speculator.run, plan)
            except Exception as exc:
                self._fail_all(EngineDead(f"the model thread failed: {exc!r}"))
                raise
            self._recorder.step(slices, self._running, time.monotonic() - started)
            # 5. Publish: commit fed rows and emitted tokens, finish jobs that hit a stop.
            self._recorder.tokens(sum(self._commit(piece, tokens) for piece, tokens in zip(slices, emitted)))

    def _accept(self, message: object) -> None:
        match message:
            case AllocateKV(reply=reply):
                reply.set_result(self.pool.allocate())
            case ReserveKV(kv=kv, total_positions=total, reply=reply):
                try:
                    self.pool.reserve(kv, total)
                    reply.set_result(None)
                except Overloaded as exc:
                    reply.set_exception(exc)
                self._recorder.memory()
            case FreeKV(kv=kv, reply=reply):
                self.pool.free(kv)
                self._speculator.forget(kv)
                reply.set_result(None)
                self._recorder.memory()
            case SubmitJob(job=job):
                job.submitted_at = time.monotonic()
                job.num_prompt = len(job.inputs)
                self._samplers[id(job)] = Sampler(job.sampling)
                self._running.append(job)
            case _:
                raise TypeError(f"scheduler got an unknown message {message!r}")

    def _commit(self, piece: Slice, emitted: tuple[int, ...]) -> int:
        """Applies stop conditions to the emitted tokens in order; tokens after a stop are dropped
        and their rows rolled back, so the slab holds exactly the committed tokens. Returns how
        many tokens it kept."""
        job = piece.job
        job.num_fed = piece.stop
        reason: StopReason | None = None
        num_kept = 0
        now = time.monotonic()
        for token in emitted:
            num_kept += 1
            self._recorder.token(job, now)
            job.generated.append(token)
            job.inputs.append(token)
            job.stream.push(token)
            if token in job.eos_token_ids:
                reason = StopReason.EOS
            elif len(job.generated) >= job.max_tokens:
                reason = StopReason.MAX_TOKENS
            if reason is not None:
                break
        if emitted:
            # Every kept token but the last was fed in this step (accepted draft rows); the last
            # is pending, as a plain decode step's sampled token is.
            job.num_fed = piece.stop + num_kept - 1
            job.kv.num_positions -= len(emitted) - num_kept
        self._speculator.commit(piece, emitted, num_kept)
        if reason is not None:
            self._finish(job, reason)
        return num_kept

    def _finish_cancelled(self) -> None:
        for job in list(self._running):
            if job.stream.is_stalled(self._consumer_stall_s):
                log.warning("consumer_stalled", kv_id=job.kv.kv_id, unread_s=self._consumer_stall_s)
                self._metrics.stalled_consumers.inc()
                job.stream.cancel()
            if job.stream.is_cancelled:
                self._finish(job, StopReason.CANCELLED)

    def _finish(self, job: Job, reason: StopReason) -> None:
        self._running.remove(job)
        self._samplers.pop(id(job), None)
        first = job.first_token_at or time.monotonic()
        if not job.done.done():
            job.done.set_result(JobResult(tuple(job.generated), job.num_fed, reason, first - job.submitted_at,
                                          job.num_draft_tokens, job.num_accepted_tokens))

    def _fail_all(self, error: Exception) -> None:
        for job in self._running:
            job.reject(error)
        self._running.clear()
        self._samplers.clear()
