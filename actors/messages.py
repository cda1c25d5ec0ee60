"""Typed messages between the servicer, session actors and the scheduler actor.

Request/reply messages carry a future; `reject` fails it when the receiver is gone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.engine.sampler import SamplingParams
from kakeya.runtime.forward.session_kv import SessionKV

from .token_stream import StopReason, TokenStream


class _Replies:
    """Mixin of request/reply messages: a receiver that is gone fails the reply."""

    __slots__ = ()
    reply: asyncio.Future[Any]

    def reject(self, error: BaseException) -> None:
        if not self.reply.done():
            self.reply.set_exception(error)


# --- to a session actor -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Append(_Replies):
    token_ids: tuple[int, ...]
    reply: asyncio.Future[int]


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
class Close(_Replies):
    reason: str
    reply: asyncio.Future[int]


# --- to the scheduler actor -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KVLease:
    """A session's KV as the scheduler reports it: the handle to pass back, and what it holds."""

    kv: SessionKV
    num_positions: int  # positions fed so far
    num_resident: int  # of those, held in the slab (fewer in bounded mode)
    lease_bytes: int  # held for the session, its draft slab included
    used_bytes: int  # of lease_bytes, those of the positions stored


@dataclass(frozen=True, slots=True)
class ReserveKV(_Replies):
    """Make the session's KV hold total_positions (allocating it when kv is None), or fail with
    KVExhausted, which says how many bytes the reservation needs."""

    kv: SessionKV | None
    total_positions: int
    reply: asyncio.Future[KVLease]


@dataclass(frozen=True, slots=True)
class SlabOp(_Replies):
    """Run apply(pool) between steps: it makes a slab (a fork or an import; the reply is its
    KVLease, and a draft model's catch-up state starts from fed_tokens) or reads one (the reply is
    what apply returns). A failure is the reply's, and apply leaves nothing half-made."""

    apply: Callable[[KVPool], Any]
    reply: asyncio.Future[Any]
    fed_tokens: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class FreeKV(_Replies):
    kv: SessionKV
    reply: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class JobResult:
    generated: tuple[int, ...]
    num_fed: int  # inputs (pending + generated) whose K/V are now in the slab
    stop_reason: StopReason
    prefill_duration_s: float
    lease: KVLease  # the session's KV after the job
    num_draft_tokens: int = 0  # speculative tokens proposed for this call and verified
    num_accepted_tokens: int = 0  # of those, accepted by the verifier


@dataclass(slots=True)
class Job:
    """A Generate's work, run by the scheduler step by step until a stop condition.

    The scheduler is its only writer while it runs; the session reads it after `done` resolves,
    except the progress the scheduler publishes after each step (`generated`, `num_fed`,
    `num_resident`, `used_bytes`), which the session's snapshot reports while the job runs.
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
    num_resident: int = 0  # the slab's resident tokens and used bytes after the last step
    used_bytes: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    submitted_at: float = 0.0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None

    def reject(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


@dataclass(frozen=True, slots=True)
class SubmitJob:
    job: Job

    def reject(self, error: BaseException) -> None:
        self.job.reject(error)
