"""The one seam between the scheduler and the engine: a typed, frozen step request and its result.

The scheduler (on the event loop) describes a step as one StepRequest; the engine (on the model
thread) runs it and answers one StepResult. Rows are typed named tuples: immutable like frozen
dataclasses, and several times cheaper to build, which counts at one of each per session and step. The engine alone moves a session's KV positions:
it commits the rows it fed, rolls back rejected draft rows and rows past a stop, and claims
run-ahead forwards. The scheduler alone pushes the result's tokens into token streams.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NamedTuple

import torch

from kakeya.runtime.engine.sampler import Sampler
from kakeya.runtime.forward.session_kv import SessionKV

if TYPE_CHECKING:
    from kakeya.runtime.engine.draft import DraftRequest


class RowStop(enum.Enum):
    """Why a row's request ends with this step's tokens."""

    EOS = "eos"
    MAX_TOKENS = "max_tokens"


class StopRule(NamedTuple):
    """When a request ends: at any of its end-of-sequence ids, or once it has emitted tokens_left more."""

    eos_token_ids: frozenset[int]
    tokens_left: int

    def cut(self, emitted: tuple[int, ...]) -> tuple[int, RowStop | None]:
        """How many of `emitted` the request keeps, and why it stops there (None: it goes on)."""
        for count, token in enumerate(emitted, 1):
            if token in self.eos_token_ids:
                return count, RowStop.EOS
            if count >= self.tokens_left:
                return count, RowStop.MAX_TOKENS
        return len(emitted), None


class StepRow(NamedTuple):
    """One session's rows in a step: feed `tokens` at the session's next positions, then sample
    after the last one when `sampler` is set.

    With a draft, the draft tokens are fed after `tokens` in the same forward and verified: the
    row emits the accepted ones plus one verifier token. With a draft request, the draft model
    first catches up and proposes on the model thread, and its proposal becomes the draft.
    """

    kv: SessionKV
    tokens: tuple[int, ...]
    sampler: Sampler | None = None
    draft: tuple[int, ...] = ()
    # [len(draft), vocab]: what each draft token was drawn from; None: proposed with certainty.
    draft_probs: torch.Tensor | None = None
    draft_request: DraftRequest | None = None
    # Tokens after a stop are dropped and their rows rolled back; None: nothing stops the row.
    stop: StopRule | None = None

    @property
    def is_final(self) -> bool:
        """The token sampled here is its request's last: run-ahead launches no step for it."""
        return (self.sampler is not None and self.stop is not None
                and self.stop.tokens_left <= len(self.draft) + 1)


# The generated __new__ of a NamedTuple costs a Python frame and argument binding; rows and their
# results are built once per session and step, so the hot paths call this with every field given.
make = tuple.__new__


class StepRequest(NamedTuple):
    rows: tuple[StepRow, ...]


class RowResult(NamedTuple):
    """What one row of a step produced, after its stop rule."""

    tokens: tuple[int, ...]  # accepted draft tokens, then one sampled token; () when nothing was sampled
    num_drafted: int  # draft tokens the verifier checked
    num_accepted: int  # of those, accepted (before the stop rule cut anything)
    stop: RowStop | None
    num_positions: int  # the session's KV positions once the step is committed


class StepResult(NamedTuple):
    rows: tuple[RowResult, ...]
