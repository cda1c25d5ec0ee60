"""Which rows run in the next step: pure policy over the running jobs, no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .messages import Job


@dataclass(frozen=True, slots=True)
class Slice:
    """Feed job.inputs[start:stop]; sample after it when it reaches the end of the inputs.

    A decode slice may also verify num_draft proposed tokens, fed after it in the same forward.
    """

    job: Job
    start: int
    stop: int
    num_draft: int = 0

    @property
    def samples(self) -> bool:
        return self.stop == len(self.job.inputs)


def _no_drafts(job: Job) -> int:
    return 0


def plan_step(jobs: Sequence[Job], chunk_tokens: int, max_step_tokens: int,
              draft_rows: Callable[[Job], int] = _no_drafts) -> list[Slice]:
    """Decode rows first (one token each, latency-bound), then prefill chunks in arrival order.

    Prefill is cut into fixed chunks of at most chunk_tokens, so a long prompt never stalls the
    other sessions' decoding for more than one chunk's forward. draft_rows(job) says how many
    proposed tokens a decoding job would verify; they take rows of the budget too, and get fewer
    when it runs short (a decode row itself is never dropped for another job's drafts).
    """
    slices: list[Slice] = []
    budget = max_step_tokens
    prefilling: list[Job] = []
    decoding: list[Job] = []
    for job in jobs:
        remaining = len(job.inputs) - job.num_fed
        if remaining == 1 and budget > 0:
            decoding.append(job)
            budget -= 1
        elif remaining > 1:
            prefilling.append(job)
    for job in decoding:
        num_draft = min(draft_rows(job), budget)
        slices.append(Slice(job, job.num_fed, job.num_fed + 1, num_draft))
        budget -= num_draft
    for job in prefilling:
        if budget <= 0:
            break
        take = min(chunk_tokens, len(job.inputs) - job.num_fed, budget)
        slices.append(Slice(job, job.num_fed, job.num_fed + take))
        budget -= take
    return slices
