"""The scheduler actor: pools every session's pending rows into one forward per step.

Accepts: AllocateKV, ReserveKV, FreeKV (KV memory, which it owns through the pool) and
SubmitJob (a Generate's work). Invariants: the model thread runs at most one step at a time,
and KV slabs are resized or freed only between steps, never while the model thread uses them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

import structlog

from kakeya.runtime.errors import EngineDead, Overloaded
from kakeya.runtime.kv_memory import KVPool
from kakeya.runtime.model_runner import ModelRunner, WorkItem
from kakeya.runtime.sampler import Sampler

from .base import Actor
from .batch_policy import Slice, plan_step
from .messages import AllocateKV, FreeKV, Job, JobResult, ReserveKV, SubmitJob
from .token_stream import StopReason

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class BatchStats:
    """Written by the scheduler only; read by GetRuntimeInfo."""

    num_forwards: int = 0
    max_sessions_per_forward: int = 0
    total_sessions: int = 0
    total_rows: int = 0

    @property
    def mean_sessions_per_forward(self) -> float:
        return self.total_sessions / self.num_forwards if self.num_forwards else 0.0


class SchedulerActor(Actor):
    name = "scheduler"

    def __init__(self, runner: ModelRunner, pool: KVPool, chunk_tokens: int, max_step_tokens: int,
                 mailbox_size: int, on_crash: Callable[[BaseException], None] | None = None) -> None:
        super().__init__(mailbox_size, on_crash)
        self._runner = runner
        self.pool = pool
        self._chunk_tokens = chunk_tokens
        self._max_step_tokens = max_step_tokens
        self._running: list[Job] = []
        self._samplers: dict[int, Sampler] = {}
        self.stats = BatchStats()

    def closed_error(self) -> Exception:
        return EngineDead("the scheduler has stopped")

    @property
    def num_running(self) -> int:
        return len(self._running)

    async def run_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # 1. Take input: block only when nothing is running.
            message = await self.next_message(block=not self._running)
            while message is not None:
                self._accept(message)
                message = await self.next_message(block=False)
            if self.is_stopping and not self._running:
                return
            # 2. Drop jobs whose consumer went away, before spending a forward on them.
            self._finish_cancelled()
            if not self._running:
                continue
            # 3. Schedule.
            slices = plan_step(self._running, self._chunk_tokens, self._max_step_tokens)
            items = [WorkItem(s.job.kv, tuple(s.job.inputs[s.start:s.stop]),
                              self._samplers[id(s.job)] if s.samples else None) for s in slices]
            # 4. Run the forward on the model thread; the event loop stays free meanwhile.
            try:
                sampled = await loop.run_in_executor(self._runner.executor, self._runner.step, items)
            except Exception as exc:
                self._fail_all(EngineDead(f"the model thread failed: {exc!r}"))
                raise
            self._record(slices)
            # 5. Publish: commit fed rows and sampled tokens, finish jobs that hit a stop.
            for piece, token in zip(slices, sampled):
                self._commit(piece, token)

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
            case FreeKV(kv=kv, reply=reply):
                self.pool.free(kv)
                reply.set_result(None)
            case SubmitJob(job=job):
                job.submitted_at = time.monotonic()
                self._samplers[id(job)] = Sampler(job.sampling)
                self._running.append(job)
            case _:
                raise TypeError(f"scheduler got an unknown message {message!r}")

    def _commit(self, piece: Slice, token: int | None) -> None:
        job = piece.job
        job.num_fed = piece.stop
        if token is None:
            return
        if job.first_token_at is None:
            job.first_token_at = time.monotonic()
        job.generated.append(token)
        job.inputs.append(token)
        job.stream.push(token)
        if token in job.eos_token_ids:
            self._finish(job, StopReason.EOS)
        elif len(job.generated) >= job.max_tokens:
            self._finish(job, StopReason.MAX_TOKENS)

    def _finish_cancelled(self) -> None:
        for job in [j for j in self._running if j.stream.is_cancelled]:
            self._finish(job, StopReason.CANCELLED)

    def _finish(self, job: Job, reason: StopReason) -> None:
        self._running.remove(job)
        self._samplers.pop(id(job), None)
        first = job.first_token_at or time.monotonic()
        if not job.done.done():
            job.done.set_result(JobResult(tuple(job.generated), job.num_fed, reason, first - job.submitted_at))

    def _fail_all(self, error: Exception) -> None:
        for job in self._running:
            job.reject(error)
        self._running.clear()
        self._samplers.clear()

    def _record(self, slices: list[Slice]) -> None:
        stats = self.stats
        stats.num_forwards += 1
        stats.max_sessions_per_forward = max(stats.max_sessions_per_forward, len(slices))
        stats.total_sessions += len(slices)
        stats.total_rows += sum(s.stop - s.start for s in slices)
