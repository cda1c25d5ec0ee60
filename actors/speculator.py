"""The scheduler's side of speculative decoding: per-session proposal state, the step's rows, commits.

N-gram and suffix proposals are looked up on the event loop when the step is planned (dictionary
lookups and short walks); suffix proposals are cut by the measured cost of this step's rows, which
the speculator times from the end of planning to the first commit of the step. Draft-model
proposals are made by the engine on the model thread, right before the verifying forward of the
same step: a row carries a draft request for that. Owned by the scheduler actor; nothing here runs
on the model thread.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass
from typing import Mapping

from kakeya.runtime.common.config import SpeculativeConfig
from kakeya.runtime.engine.draft import DraftRequest
from kakeya.runtime.forward.session_kv import SessionKV
from kakeya.runtime.common.metrics import Metrics
from kakeya.runtime.engine.step import RowResult, StepRequest, StepRow, StopRule, make
from kakeya.runtime.speculative.ngram import NgramIndex
from kakeya.runtime.speculative.suffix import SuffixProposer
from kakeya.runtime.engine.sampler import Sampler

from .batch_policy import Slice
from .messages import Job

# N-gram lookup matches suffixes of 3 down to 2 tokens. Single-token matches were accepted 6% of
# the time on free chat and made 16 concurrent CPU sessions 2x slower (rejected rows are not
# free in a full batch); from 2 tokens, acceptance rose to 17% on chat and 65% on echoed code.
NGRAM_MAX = 3
NGRAM_MIN = 2


@dataclass
class ProposalStats:
    """What speculation did so far (suffix mode): read by benchmarks, written by the scheduler only."""

    steps: int = 0  # steps planned
    decode_rows: int = 0  # decode rows committed (each emits 1 + its accepted draft tokens)
    drafted_rows: int = 0  # of those, rows that verified a draft
    accepted_tokens: int = 0
    host_seconds: float = 0.0  # spent proposing, indexing and timing on the event loop


class Speculator:
    def __init__(self, config: SpeculativeConfig, has_draft_model: bool, metrics: Metrics, chunk_tokens: int) -> None:
        if config.mode == "draft" and not has_draft_model:
            raise ValueError("--speculative draft needs a draft model")
        self.mode = config.mode
        self.num_draft_tokens = config.num_draft_tokens
        self._metrics = metrics
        self._chunk_tokens = chunk_tokens
        # kv_id -> every token fed to the session's verifier slab, in order (INV-1: as many as
        # the slab's positions). N-gram mode indexes them; draft mode feeds them to the draft.
        self._fed: dict[int, NgramIndex | array] = {}
        self._proposals: dict[int, tuple[int, ...]] = {}  # id(job) -> this step's n-gram or suffix proposal
        self.suffix = SuffixProposer() if self.mode == "suffix" else None
        self._probs: dict[int, tuple[float, ...]] = {}  # kv_id -> estimates of its proposal being verified
        self._step: list[float] | None = None  # [rows, drafted, planned at, first commit at, tokens]
        self.stats = ProposalStats()

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
            self._proposals[id(job)] = proposal
            return len(proposal)
        if self.suffix is not None:
            if job.sampling.seed is not None and not job.sampling.is_greedy:
                # What rejection sampling draws depends on the draft, and suffix drafts depend on
                # other sessions and on step timing: a seeded stream would not repeat.
                return 0
            started = time.perf_counter()
            self._close_step()
            draft = self.suffix.propose(job.kv.kv_id, job.inputs[job.num_fed:], limit)
            self._proposals[id(job)] = draft.tokens
            self._probs[job.kv.kv_id] = draft.probs
            self.stats.host_seconds += time.perf_counter() - started
            return len(draft.tokens)
        behind = job.kv.num_positions - job.kv.draft.num_positions
        return limit if behind + 1 <= self._chunk_tokens else 0

    def plan(self, slices: list[Slice], samplers: Mapping[int, Sampler]) -> StepRequest:
        """The step's rows: each slice's tokens, its n-gram draft or draft request, and its stop rule."""
        rows: list[StepRow] = []
        self._close_step()
        for piece in slices:
            job = piece.job
            tokens = tuple(job.inputs[piece.start:piece.stop])
            sampler = samplers[id(job)] if piece.samples else None
            draft = self._proposals.get(id(job), ())[:piece.num_draft]
            request = None
            if self.mode == "draft":
                request = self._draft_request(job.kv, tokens, piece.num_draft, sampler)
            stop = make(StopRule, (job.eos_token_ids, job.max_tokens - len(job.generated))) if sampler is not None else None
            rows.append(make(StepRow, (job.kv, tokens, sampler, draft, None, request, stop)))
        self._proposals.clear()
        if self.suffix is not None:
            drafted = sum(len(row.draft) for row in rows)
            self._step = [sum(len(row.tokens) for row in rows) + drafted, drafted, time.perf_counter(), 0.0, 0]
            self.stats.steps += 1
        return StepRequest(tuple(rows))

    def _close_step(self) -> None:
        """Hands the last step's measured time and tokens to the draft policy, once."""
        step, self._step = self._step, None
        if step is not None and step[3] > 0:
            self.suffix.policy.step_done(int(step[0]), int(step[1]), step[3] - step[2], int(step[4]))

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

    def commit(self, piece: Slice, result: RowResult) -> None:
        """Records a slice's outcome once the scheduler has committed its tokens to the job."""
        if self.mode == "none":
            return
        job = piece.job
        fed = self._fed.get(job.kv.kv_id)
        if self.suffix is not None:
            self._commit_suffix(piece, result)
        else:
            if fed is None:
                fed = self._fed[job.kv.kv_id] = NgramIndex(NGRAM_MAX, NGRAM_MIN) if self.mode == "ngram" else array("l")
            fed.extend(job.inputs[piece.start:job.num_fed])
        if result.num_drafted and result.tokens:
            job.num_draft_tokens += result.num_drafted
            job.num_accepted_tokens += result.num_accepted
            m = self._metrics
            m.spec_drafts.inc()
            m.spec_draft_tokens.inc(result.num_drafted)
            m.spec_accepted_tokens.inc(result.num_accepted)
            for position in range(1, result.num_drafted + 1):
                m.spec_draft_per_position.labels(position=str(position)).inc()
                if position <= result.num_accepted:
                    m.spec_accepted_per_position.labels(position=str(position)).inc()

    def adopt(self, kv: SessionKV, fed_tokens: tuple[int, ...]) -> None:
        """A forked or imported slab: its proposal state starts from the tokens its positions hold."""
        if self.mode == "none" or not fed_tokens:
            return
        if self.suffix is not None:
            self.suffix.feed(kv.kv_id, fed_tokens)
            return
        fed = self._fed[kv.kv_id] = NgramIndex(NGRAM_MAX, NGRAM_MIN) if self.mode == "ngram" else array("l")
        fed.extend(fed_tokens)

    def _commit_suffix(self, piece: Slice, result: RowResult) -> None:
        job, step, stats = piece.job, self._step, self.stats
        started = time.perf_counter()
        if step is not None:
            step[3] = step[3] or started
            step[4] += len(result.tokens)
        if piece.stop - piece.start == 1 and result.tokens:  # a decode row (its inputs have grown since)
            stats.decode_rows += 1
            stats.drafted_rows += result.num_drafted > 0
            stats.accepted_tokens += result.num_accepted
        self.suffix.feed(job.kv.kv_id, job.inputs[piece.start:job.num_fed])
        probs = self._probs.pop(job.kv.kv_id, ())
        if result.num_drafted and result.tokens:
            self.suffix.verified(job.kv.kv_id, probs[:result.num_drafted], result.num_accepted)
        if result.stop is not None:
            self.suffix.finished(job.kv.kv_id, job.generated)
        stats.host_seconds += time.perf_counter() - started

    def forget(self, kv: SessionKV) -> None:
        """The session's slab was freed: its proposal state goes with it."""
        self._fed.pop(kv.kv_id, None)
        self._probs.pop(kv.kv_id, None)
        if self.suffix is not None:
            self.suffix.forget(kv.kv_id)
