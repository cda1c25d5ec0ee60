"""The engine process steps greedy decode rows on its own, ahead of the front's plans.

After a step whose rows all decode greedily, the engine does not wait for the front to commit the
step's tokens and plan the next: it runs the step's continuation (runtime/engine/wire.py) itself,
and the one after, at most MAX_AHEAD steps past what the front has taken, sending each reply as
it is made. The front takes a reply when its own plan is that continuation (it tells the engine
with the next OpsMessage), and otherwise sends its plan: a session joined, one was cancelled or
its consumer stalled. The engine then rewinds every step the front did not take, restoring the
positions each row had before it, so no session holds a token it did not get. Stops the engine
sees itself (EOS, max_tokens) end a row's continuation at once; the front's stops take effect
with its next plan, at most MAX_AHEAD steps late, and cost nothing but those steps' work.
"""

from __future__ import annotations

from collections import deque

from kakeya.runtime.engine.sampler import Sampler
from kakeya.runtime.engine.step import StepRow
from kakeya.runtime.engine.wire import WireResult, WireRow, continuation
from kakeya.runtime.forward.session_kv import SessionKV

MAX_AHEAD = 2


class StepAhead:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.next: tuple[WireRow, ...] | None = None  # the continuation to step on its own
        # Per step sent ahead and not yet taken: each row's KV and its positions before the step.
        self._untaken: deque[list[tuple[SessionKV, int]]] = deque()

    @property
    def can_step(self) -> bool:
        return self.next is not None and len(self._untaken) < MAX_AHEAD

    def after(self, wire: tuple[WireRow, ...], rows: tuple[StepRow, ...],
              results: tuple[WireResult, ...]) -> bool:
        """Sets what to step next after a step; True when the engine will step it on its own."""
        self.next = None
        if self.enabled and rows and all(_greedy_decode(row) for row in rows):
            following = continuation(wire, results)
            self.next = following or None
        return self.next is not None

    def stepping(self, rows: tuple[StepRow, ...]) -> None:
        """Records the positions of a step's rows before the engine steps it ahead."""
        self._untaken.append([(row.kv, row.kv.num_positions) for row in rows])

    def taken(self, count: int) -> None:
        for _ in range(count):
            self._untaken.popleft()

    def rewind(self) -> int:
        """Undoes every step the front did not take, latest first; returns how many."""
        count = len(self._untaken)
        while self._untaken:
            for kv, positions in reversed(self._untaken.pop()):
                kv.num_positions = positions
        self.next = None
        return count


def _greedy_decode(row: StepRow) -> bool:
    sampler: Sampler | None = row.sampler
    return (sampler is not None and sampler.params.is_greedy and not row.draft and row.draft_request is None
            and row.stop is not None and row.kv.window_tokens == 0)
