"""Typed messages between the servicer, session actors and the scheduler actor.

Request/reply messages carry a future; `reject` fails it when the receiver is gone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from kakeya.runtime.forward.session_kv import SessionKV
from kakeya.runtime.engine.sampler import SamplingParams

from .token_stream import StopReason, TokenStream


def _reject(reply: asyncio.Future[Any], error: BaseException) -> None:
    if not reply.done():
        reply.set_exception(error)


# --- to a session actor -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Append:
    token_ids: tuple[int, ...]
    reply: asyncio.Future[int]

    def reject(self, error: BaseException) -> None:
        _reject(self.reply, error)


@dataclass(frozen=True, slots=True)
class GenerateParams:
    max_tokens: int
    sampling: SamplingParams


@dataclass(frozen=True, slots=True)
class Generate:
    params: GenerateParams
    stream: TokenStream

    def reject(self, error: BaseException) -> None:
        self.stream.fail(error)


@dataclass(frozen=True, slots=True)
class Close:
    reason: str
    reply: asyncio.Future[int]

    def reject(self, error: BaseException) -> None:
        _reject(self.reply, error)


# --- to the scheduler actor -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllocateKV:
    reply: asyncio.Future[SessionKV]

    def reject(self, error: BaseException) -> None:
        _reject(self.reply, error)


@dataclass(frozen=True, slots=True)
class ReserveKV:
    """Grow kv to hold total_positions, or fail with Overloaded."""

    kv: SessionKV
    total_positions: int
    reply: asyncio.Future[None]

    def reject(self, error: BaseException) -> None:
        _reject(self.reply, error)


@dataclass(frozen=True, slots=True)
class FreeKV:
    kv: SessionKV
    reply: asyncio.Future[None]

    def reject(self, error: BaseException) -> None:
        _reject(self.reply, error)


@dataclass(frozen=True, slots=True)
class JobResult:
    generated: tuple[int, ...]
    num_fed: int  # inputs (pending + generated) whose K/V are now in the slab
    stop_reason: StopReason
    prefill_duration_s: float
    num_draft_tokens: int = 0  # speculative tokens proposed for this call and verified
    num_accepted_tokens: int = 0  # of those, accepted by the verifier


@dataclass(slots=True)
class Job:
    """A Generate's work, run by the scheduler step by step until a stop condition.

    The scheduler is its only writer while it runs; the session reads it after `done` resolves.
    """

    kv: SessionKV
    inputs: list[int]  # pending tokens, then each generated token as it is sampled
    max_tokens: int
    eos_token_ids: frozenset[int]
    sampling: SamplingParams
    stream: TokenStream
    done: asyncio.Future[JobResult]
    num_fed: int = 0
    num_prompt: int = 0  # the pending tokens it started with; later inputs are generated
    generated: list[int] = field(default_factory=list)
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    submitted_at: float = 0.0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None

    def reject(self, error: BaseException) -> None:
        _reject(self.done, error)


@dataclass(frozen=True, slots=True)
class SubmitJob:
    job: Job

    def reject(self, error: BaseException) -> None:
        self.job.reject(error)
