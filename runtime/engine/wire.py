"""The messages between the front process and an engine process: one each way per step.

A step goes in as one StepMessage: the KV operations queued since the last one (resizes and
frees the pool made, samplers to create or forget), then one WireRow per session, which names its
KV by id and its sampler by key rather than carrying device tensors or generators. It comes back
as one StepReply: a WireResult per row with the row's tokens, stop and KV positions, and the
engine's own timings. Everything here is plain data, pickled with protocol 5 by the pipe.
"""

from __future__ import annotations

from typing import NamedTuple

from kakeya.runtime.engine.assembly import EngineFacts
from kakeya.runtime.engine.step import RowStop, StopRule


class WireDraftRequest(NamedTuple):
    """A draft-model request: feed `tokens` to the session's draft slab, then propose num_draft."""

    tokens: tuple[int, ...]
    num_draft: int
    sampler: int | None


class WireRow(NamedTuple):
    """A StepRow across the boundary: the KV by its id, the sampler by its key."""

    kv_id: int
    tokens: tuple[int, ...]
    sampler: int | None = None  # a key a ("sampler", key, params) operation created
    draft: tuple[int, ...] = ()
    draft_request: WireDraftRequest | None = None
    stop: StopRule | None = None


class StepMessage(NamedTuple):
    ops: tuple[tuple, ...]  # applied in order before the step (runtime/engine/remote_kv.py)
    rows: tuple[WireRow, ...]


class OpsMessage(NamedTuple):
    """KV operations that do not wait for the next plan, and how many steps the engine ran ahead
    the front has taken since its last message; no reply. Sent when the front takes a step the
    engine ran on its own, and for a free while no step runs."""

    ops: tuple[tuple, ...]
    taken: int = 0


class ReadKV(NamedTuple):
    """An export's read-out, between steps: the engine applies `ops`, then answers with the slab's
    stored rows from first_row on (KVRows)."""

    ops: tuple[tuple, ...]
    kv_id: int
    first_row: int


class KVRows(NamedTuple):
    """A slab's stored rows as bytes in the slab's layout (session_snapshot.KVImage's fields)."""

    num_positions: int
    window_start: int
    first_row: int
    rows: int
    data: bytes


class WireResult(NamedTuple):
    """A RowResult and the row's KV positions (and its draft slab's) once the step is committed."""

    tokens: tuple[int, ...]
    num_drafted: int
    num_accepted: int
    stop: RowStop | None
    num_positions: int
    window_start: int
    draft_positions: int = -1  # -1: the session has no draft slab
    draft_window_start: int = 0


class StepReply(NamedTuple):
    rows: tuple[WireResult, ...]
    step_s: float  # the step inside the engine: KV operations, drafts, forward, stop rules
    waited_s: float  # how long the engine waited for this step's message while work was running; -1: idle
    run_ahead: tuple[tuple[str, int], ...] = ()  # run-ahead outcomes since the last reply
    ahead: bool = False  # a step the engine ran on its own: the continuation of the one before
    runs_ahead: bool = False  # the engine steps this step's continuation without waiting for a plan


def continuation(rows: tuple[WireRow, ...], results: tuple[WireResult, ...]) -> tuple[WireRow, ...]:
    """The step after a step of greedy decode rows, as the front would plan it: every row that did
    not stop feeds the token it just sampled, with that many fewer tokens left. Both sides compute
    it: the engine to step it on its own, the front to tell whether its plan is that step."""
    return tuple(WireRow(row.kv_id, result.tokens[-1:], row.sampler, (), None,
                         row.stop._replace(tokens_left=row.stop.tokens_left - len(result.tokens)))
                 for row, result in zip(rows, results) if result.stop is None)


class StepFailed(NamedTuple):
    """The step raised in the engine: the engine is no longer usable."""

    error: str


class EngineReady(NamedTuple):
    facts: EngineFacts
    pid: int


class LoadFailed(NamedTuple):
    error: str
