"""What the scheduler records about each step and each job: batching figures and Prometheus series."""

from __future__ import annotations

import time
from dataclasses import dataclass

from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.common.metrics import Metrics

from .batch_policy import Slice
from .messages import Job


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


class StepRecorder:
    def __init__(self, metrics: Metrics, pool: KVPool) -> None:
        self.stats = BatchStats()
        self._metrics = metrics
        self._pool = pool

    def step(self, slices: list[Slice], running: list[Job], duration_s: float) -> None:
        stats, m = self.stats, self._metrics
        rows = sum(s.stop - s.start + s.num_draft for s in slices)  # verification rows count too
        stats.num_forwards += 1
        stats.max_sessions_per_forward = max(stats.max_sessions_per_forward, len(slices))
        stats.total_sessions += len(slices)
        stats.total_rows += rows
        m.forwards.inc()
        m.batch_sessions.observe(len(slices))
        m.batch_tokens.observe(rows)
        m.step_duration.observe(duration_s)
        m.running.set(len(running))
        m.waiting.set(len(running) - len(slices))
        prompt_rows = sum(max(0, min(s.stop, s.job.num_prompt) - s.start) for s in slices)
        m.prompt_tokens.inc(prompt_rows)
        now = time.monotonic()
        for piece in slices:
            job = piece.job
            if job.scheduled_at is None:
                job.scheduled_at = now - duration_s
                m.queue_time.observe(job.scheduled_at - job.submitted_at)

    def token(self, job: Job, now: float) -> None:
        """Latency figures of one emitted token; the token count is added once a step (`tokens`)."""
        m = self._metrics
        if job.first_token_at is None:
            job.first_token_at = now
            m.time_to_first_token.observe(now - job.submitted_at)
        else:
            m.inter_token_latency.observe(now - job.last_token_at)
        job.last_token_at = now

    def tokens(self, count: int) -> None:
        if count:
            self._metrics.generation_tokens.inc(count)

    def memory(self) -> None:
        """After a slab was reserved, trimmed or freed. The split of held bytes is summed over every
        slab, so it is taken here, once a request, rather than after every step."""
        pool, m = self._pool, self._metrics
        used = pool.used_positions_bytes()
        m.session_kv_live_bytes.set(pool.used_bytes)
        m.kv_usage_ratio.set(pool.used_bytes / pool.budget_bytes)
        m.kv_used_bytes.set(used)
        m.kv_reserved_bytes.set(pool.used_bytes - used)

    def idle(self) -> None:
        self._metrics.running.set(0)
        self._metrics.waiting.set(0)
