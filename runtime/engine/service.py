"""The engine process's side of the boundary: session slabs by id, samplers by key, and the step.

Between steps it applies the KV operations the front queued, in order: resizes (which allocate a
session's slab on first use) and frees, a fork's copy and an import's rows, and sampler creation
and release. This is the one place where the engine changes KV memory between steps; an export
reads a slab here too, after the operations queued before it. Then it turns the wire rows into
StepRows over its own SessionKVs and runs the engine's step. Between plans it steps greedy decode
rows on its own (step_ahead.py).
"""

from __future__ import annotations

import time
from collections import Counter

from kakeya.runtime.engine.assembly import EngineFacts
from kakeya.runtime.engine.draft import DraftRequest
from kakeya.runtime.engine.engine import Engine
from kakeya.runtime.engine.sampler import Sampler
from kakeya.runtime.engine.session_snapshot import copy_rows, image_from_bytes, read_kv, write_rows
from kakeya.runtime.engine.step import StepRequest, StepRow
from kakeya.runtime.engine.step_ahead import StepAhead
from kakeya.runtime.engine.wire import KVRows, ReadKV, StepMessage, StepReply, WireResult, WireRow
from kakeya.runtime.forward.session_kv import SessionKV


class EngineService:
    def __init__(self, engine: Engine, facts: EngineFacts, sink_tokens: int, window_tokens: int,
                 run_ahead_outcomes: Counter[str] | None = None, step_ahead: bool = True) -> None:
        self.engine = engine
        self.ahead = StepAhead(step_ahead)
        self._busy = False
        self._facts = facts
        self._sink_tokens = sink_tokens
        self._window_tokens = window_tokens
        self._kvs: dict[int, SessionKV] = {}
        self._samplers: dict[int, Sampler] = {}
        # Counted by the runner's run-ahead callback; each reply carries and clears them.
        self.run_ahead_outcomes: Counter[str] = run_ahead_outcomes if run_ahead_outcomes is not None else Counter()

    @property
    def num_slabs(self) -> int:
        return len(self._kvs)

    @property
    def busy(self) -> bool:
        """The last step left rows running: a wait for the next one is the front's."""
        return self._busy

    def apply(self, ops: tuple[tuple, ...]) -> None:
        """KV and sampler operations, in the order the front made them."""
        for op in ops:
            match op:
                case ("resize", kv_id, is_draft, capacity):
                    kv = self._kvs.get(kv_id) or self._new_kv(kv_id)
                    (kv.draft if is_draft else kv).resize(capacity)
                case ("free", kv_id):
                    kv = self._kvs.pop(kv_id, None)
                    if kv is not None:
                        kv.release()
                        if kv.draft is not None:
                            kv.draft.release()
                case ("copy", source_id, kv_id):
                    copy_rows(self._kvs[kv_id], self._kvs[source_id])
                case ("write", kv_id, num_positions, window_start, rows, data):
                    write_rows(self._kvs[kv_id], image_from_bytes(num_positions, window_start, 0, rows, data))
                case ("sampler", key, params):
                    self._samplers[key] = Sampler(params)
                case ("forget_sampler", key):
                    self._samplers.pop(key, None)
                case _:
                    raise ValueError(f"unknown KV operation {op!r}")

    def read(self, message: ReadKV) -> KVRows:
        """An export's read-out, after the operations queued before it."""
        self.ahead.rewind()
        self.apply(message.ops)
        kv = self._kvs.get(message.kv_id)
        if kv is None:  # a slab never allocated: it stores nothing
            return KVRows(0, 0, message.first_row, 0, b"")
        image = read_kv(kv, message.first_row)
        return KVRows(image.num_positions, image.window_start, image.first_row, image.rows,
                      image.data.numpy().tobytes())

    def _new_kv(self, kv_id: int) -> SessionKV:
        kv = SessionKV(self._facts.kv_shape, self._sink_tokens, self._window_tokens)
        kv.kv_id = kv_id  # the front's handle and this slab are one session's KV under one id
        if self._facts.draft_shape is not None:
            kv.draft = SessionKV(self._facts.draft_shape, self._sink_tokens, self._window_tokens)
        self._kvs[kv_id] = kv
        return kv

    def step(self, message: StepMessage, waited_s: float) -> StepReply:
        """The front's plan: every step run ahead that it did not take is undone first."""
        started = time.perf_counter()
        self.ahead.rewind()
        self.apply(message.ops)
        return self._run(message.rows, started, waited_s, ahead=False)

    def step_ahead(self, waited_s: float) -> StepReply:
        """The continuation of the last step, without a plan from the front."""
        return self._run(self.ahead.next, time.perf_counter(), waited_s, ahead=True)

    def _run(self, wire_rows: tuple[WireRow, ...], started: float, waited_s: float, ahead: bool) -> StepReply:
        rows = tuple(self._row(row) for row in wire_rows)
        if ahead:
            self.ahead.stepping(rows)
        result = self.engine.step(StepRequest(rows))
        wire = tuple(_wire_result(row.kv, out) for row, out in zip(rows, result.rows))
        runs_ahead = self.ahead.after(wire_rows, rows, wire)
        self._busy = any(out.stop is None for out in wire)
        outcomes = tuple(self.run_ahead_outcomes.items())
        self.run_ahead_outcomes.clear()
        return StepReply(wire, time.perf_counter() - started, waited_s, outcomes, ahead, runs_ahead)

    def _row(self, row: WireRow) -> StepRow:
        kv = self._kvs[row.kv_id]
        samplers = self._samplers
        request = None
        if row.draft_request is not None:
            wanted = row.draft_request
            sampler = samplers[wanted.sampler] if wanted.sampler is not None else None
            request = DraftRequest(kv.draft, wanted.tokens, wanted.num_draft, sampler)
        sampler = samplers[row.sampler] if row.sampler is not None else None
        return StepRow(kv, row.tokens, sampler, row.draft, draft_request=request, stop=row.stop)


def _wire_result(kv: SessionKV, out) -> WireResult:
    draft = kv.draft
    if draft is None:
        return WireResult(out.tokens, out.num_drafted, out.num_accepted, out.stop, kv.num_positions,
                          kv.window_start)
    return WireResult(out.tokens, out.num_drafted, out.num_accepted, out.stop, kv.num_positions, kv.window_start,
                      draft.num_positions, draft.window_start)
