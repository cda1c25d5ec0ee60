"""The scheduler's side of speculative decoding: per-session proposal state, step items, commits.

N-gram proposals are looked up on the event loop when the step is planned (a few dictionary
lookups). Draft-model proposals are made on the model thread by `run`, right before the verifying
forward of the same step. Owned by the scheduler actor; only `run` executes on the model thread.
"""

from __future__ import annotations

import dataclasses
from array import array
from dataclasses import dataclass
from typing import Mapping

from kakeya.runtime.common.config import SpeculativeConfig
from kakeya.runtime.engine.draft import DraftRequest, DraftRunner
from kakeya.runtime.forward.session_kv import SessionKV
from kakeya.runtime.common.metrics import Metrics
from kakeya.runtime.engine.runner import ModelRunner, WorkItem
from kakeya.runtime.speculative.ngram import NgramIndex
from kakeya.runtime.engine.sampler import Sampler

from .batch_policy import Slice
from .messages import Job

# N-gram lookup matches suffixes of 3 down to 2 tokens. Single-token matches were accepted 6% of
# the time on free chat and made 16 concurrent CPU sessions 2x slower (rejected rows are not
# free in a full batch); from 2 tokens, acceptance rose to 17% on chat and 65% on echoed code.
NGRAM_MAX = 3
NGRAM_MIN = 2


@dataclass(frozen=True, slots=True)
class StepPlan:
    items: list[WorkItem]
    # (index into items, request): sessions whose draft model feeds and proposes this step.
    draft_requests: list[tuple[int, DraftRequest]]


class Speculator:
    def __init__(self, config: SpeculativeConfig, runner: ModelRunner, draft: DraftRunner | None,
                 metrics: Metrics, chunk_tokens: int) -> None:
        if config.mode == "draft" and draft is None:
            raise ValueError("--speculative draft needs a draft model")
        self.mode = config.mode
        self.num_draft_tokens = config.num_draft_tokens
        self._runner = runner
        self.executor = runner.executor  # the model thread, shared by the draft model
        self._draft = draft
        self._metrics = metrics
        self._chunk_tokens = chunk_tokens
        # kv_id -> every token fed to the session's verifier slab, in order (INV-1: as many as
        # the slab's positions). N-gram mode indexes them; draft mode feeds them to the draft.
        self._fed: dict[int, NgramIndex | array] = {}
        self._ngram_proposals: dict[int, tuple[int, ...]] = {}  # id(job) -> this step's proposal

    def draft_rows(self, job: Job) -> int:
        """How many proposed tokens the job would verify in its next decode step."""
        # Never propose past max_tokens: every emitted token then counts, and the KV the session
        # reserved (history + max_tokens) always holds the verification rows.
        limit = min(self.num_draft_tokens, job.max_tokens - len(job.generated) - 1)
        if self.mode == "none" or limit <= 0:
            return 0
        fed = self._fed.get(job.kv.kv_id)
        if self.mode == "ngram":
            proposal = fed.propose(tuple(job.inputs[job.num_fed:]), limit) if fed is not None else ()
            self._ngram_proposals[id(job)] = proposal
            return len(proposal)
        behind = job.kv.num_positions - job.kv.draft.num_positions
        return limit if behind + 1 <= self._chunk_tokens else 0

    def plan(self, slices: list[Slice], samplers: Mapping[int, Sampler]) -> StepPlan:
        items: list[WorkItem] = []
        requests: list[tuple[int, DraftRequest]] = []
        for piece in slices:
            job = piece.job
            tokens = tuple(job.inputs[piece.start:piece.stop])
            sampler = samplers[id(job)] if piece.samples else None
            draft = self._ngram_proposals.get(id(job), ())[:piece.num_draft] if self.mode == "ngram" else ()
            # The job's last token: nothing will ask for the step after it (run_ahead.py).
            final = sampler is not None and len(job.generated) + len(draft) + 1 >= job.max_tokens
            items.append(WorkItem(job.kv, tokens, sampler, draft, final=final))
            if self.mode == "draft":
                requests.append((len(items) - 1, self._draft_request(job.kv, tokens, piece.num_draft, sampler)))
        self._ngram_proposals.clear()
        return StepPlan(items, requests)

    def _draft_request(self, kv: SessionKV, tokens: tuple[int, ...], num_draft: int,
                       sampler: Sampler | None) -> DraftRequest:
        """The draft slab follows the verifier's: it is fed what it missed, then this step's tokens."""
        draft_kv = kv.draft
        fed = self._fed.get(kv.kv_id, ())
        behind = tuple(fed[draft_kv.num_positions:kv.num_positions])
        if len(behind) + len(tokens) > self._chunk_tokens:
            # Far behind (a rollback never is; this is only a safety net): catch up a chunk at a time.
            return DraftRequest(draft_kv, behind[:self._chunk_tokens], 0, None)
        return DraftRequest(draft_kv, behind + tokens, num_draft, sampler)

    def run(self, plan: StepPlan) -> list[tuple[int, ...]]:
        """On the model thread: draft-model proposals (one forward per draft position), then the
        verifying forward over every item."""
        items = plan.items
        if plan.draft_requests:
            proposals = self._draft.propose([request for _, request in plan.draft_requests])
            items = list(items)
            for (index, _), proposal in zip(plan.draft_requests, proposals):
                if proposal.tokens:
                    items[index] = dataclasses.replace(items[index], draft=proposal.tokens,
                                                       draft_probs=proposal.probs)
        return self._runner.step(items)

    def commit(self, piece: Slice, emitted: tuple[int, ...], num_kept: int) -> None:
        """Records a slice's outcome once the scheduler has applied stop conditions to `emitted`."""
        if self.mode == "none":
            return
        job, kv = piece.job, piece.job.kv
        fed = self._fed.get(kv.kv_id)
        if fed is None:
            fed = self._fed[kv.kv_id] = NgramIndex(NGRAM_MAX, NGRAM_MIN) if self.mode == "ngram" else array("l")
        fed.extend(job.inputs[piece.start:job.num_fed])
        if kv.draft is not None:
            # The draft keeps only positions whose tokens the verifier committed.
            kv.draft.num_positions = min(kv.draft.num_positions, kv.num_positions)
        if piece.num_draft and emitted:
            accepted = len(emitted) - 1
            job.num_draft_tokens += piece.num_draft
            job.num_accepted_tokens += accepted
            m = self._metrics
            m.spec_drafts.inc()
            m.spec_draft_tokens.inc(piece.num_draft)
            m.spec_accepted_tokens.inc(accepted)
            for position in range(1, piece.num_draft + 1):
                m.spec_draft_per_position.labels(position=str(position)).inc()
                if position <= accepted:
                    m.spec_accepted_per_position.labels(position=str(position)).inc()

    def forget(self, kv: SessionKV) -> None:
        """The session's slab was freed: its proposal state goes with it."""
        self._fed.pop(kv.kv_id, None)
