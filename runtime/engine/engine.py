"""The engine: runs one StepRequest on the model thread and answers one StepResult.

It owns the model runner (and the draft model's, when speculation drafts with a model) and is
the only writer of KV positions: the runner commits the rows it feeds and rolls back rejected
draft rows, run-ahead claims its launched rows, and `step` rolls back the rows past each
request's stop. Nothing here awaits: the scheduler calls `step` through the model thread's executor.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from kakeya.runtime.engine.draft import DraftRunner
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.step import RowResult, RowStop, StepRequest, StepResult, StepRow, make


class Engine:
    def __init__(self, runner: ModelRunner, draft: DraftRunner | None = None) -> None:
        self.runner = runner
        self.draft = draft

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The model thread: the only thread that touches the device."""
        return self.runner.executor

    def step(self, request: StepRequest) -> StepResult:
        """On the model thread: draft-model proposals (one forward per draft position), then one
        verifying forward over every row, then each row's stop rule."""
        rows = self._with_proposals(request.rows)
        emitted = self.runner.run(list(rows))
        return StepResult(tuple(self._commit(row, tokens) for row, tokens in zip(rows, emitted)))

    def _with_proposals(self, rows: tuple[StepRow, ...]) -> tuple[StepRow, ...]:
        asking = [(i, row.draft_request) for i, row in enumerate(rows) if row.draft_request is not None]
        if not asking:
            return rows
        proposals = self.draft.propose([request for _, request in asking])
        rows = list(rows)
        for (i, _), proposal in zip(asking, proposals):
            if proposal.tokens:
                rows[i] = rows[i]._replace(draft=proposal.tokens, draft_probs=proposal.probs)
        return tuple(rows)

    @staticmethod
    def _commit(row: StepRow, emitted: tuple[int, ...]) -> RowResult:
        """Applies the row's stop rule: tokens after a stop are dropped and their rows rolled
        back, so the slab holds exactly the tokens the request keeps. Runs once per row and step,
        so the common plain decode row (one token, no draft) takes a path without the rule's loop."""
        kv, stop_rule = row.kv, row.stop
        if stop_rule is None:
            num_kept, stop = len(emitted), None
        elif len(emitted) == 1 and not row.draft:
            num_kept = 1
            stop = (RowStop.EOS if emitted[0] in stop_rule.eos_token_ids
                    else RowStop.MAX_TOKENS if stop_rule.tokens_left <= 1 else None)
        else:
            num_kept, stop = stop_rule.cut(emitted)
        if num_kept != len(emitted):
            kv.num_positions -= len(emitted) - num_kept
        if kv.draft is not None:
            # The draft keeps only positions whose tokens the verifier committed.
            kv.draft.num_positions = min(kv.draft.num_positions, kv.num_positions)
        num_accepted = max(len(emitted) - 1, 0) if row.draft else 0
        kept = emitted if num_kept == len(emitted) else emitted[:num_kept]
        return make(RowResult, (kept, len(row.draft), num_accepted, stop, kv.num_positions))

    def warm_up(self, max_rows: int) -> None:
        """On the model thread: CUDA graphs, or the CPU's packed weights, for steps of up to max_rows."""
        self.runner.warm_up(max_rows)
        if self.draft is not None:
            self.draft.warm_up(max_rows)

    def shutdown(self) -> None:
        self.runner.shutdown()
