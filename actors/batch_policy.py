"""Which rows run in the next step: pure policy over the running jobs, no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .messages import Job


@dataclass(frozen=True, slots=True)
class Slice:
    """Feed job.inputs[start:stop]; sample after it when it reaches the end of the inputs."""

    job: Job
    start: int
    stop: int

    @property
    def samples(self) -> bool:
        return self.stop == len(self.job.inputs)


def plan_step(jobs: Sequence[Job], chunk_tokens: int, max_step_tokens: int) -> list[Slice]:
    """Decode rows first (one token each, latency-bound), then prefill chunks in arrival order.

    Prefill is cut into fixed chunks of at most chunk_tokens, so a long prompt never stalls the
    other sessions' decoding for more than one chunk's forward.
    """
    slices: list[Slice] = []
    budget = max_step_tokens
    prefilling: list[Job] = []
    for job in jobs:
        remaining = len(job.inputs) - job.num_fed
        if remaining == 1 and budget > 0:
            slices.append(Slice(job, job.num_fed, job.num_fed + 1))
            budget -= 1
        elif remaining > 1:
            prefilling.append(job)
    for job in prefilling:
        if budget <= 0:
            break
        take = min(chunk_tokens, len(job.inputs) - job.num_fed, budget)
        slices.append(Slice(job, job.num_fed, job.num_fed + take))
        budget -= take
    return slices
