"""plan_step: which rows run next. Decode rows first, prefill in chunks, the step's token budget
respected, a slice samples only when it reaches the end of its job's inputs, and progress always."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from kakeya.actors.batch_policy import Slice, plan_step
from kakeya.actors.messages import Job
from kakeya.actors.token_stream import TokenStream
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.forward.session_kv import KVShape
from kakeya.runtime.engine.sampler import SamplingParams


@pytest.fixture
async def make_job():
    pool = KVPool(KVShape(1, 1, 4, torch.float32, torch.device("cpu")), 1 << 20, 16, 0, 0, 64)
    loop = asyncio.get_running_loop()

    def make(pending: int, num_fed: int = 0, max_tokens: int = 4) -> Job:
        return Job(kv=pool.allocate(), inputs=list(range(3, 3 + pending)), max_tokens=max_tokens,
                   eos_token_ids=frozenset(), sampling=SamplingParams(), stream=TokenStream(),
                   done=loop.create_future(), num_fed=num_fed)

    return make


def spans(slices: list[Slice]) -> list[tuple[int, int, bool]]:
    return [(s.start, s.stop, s.samples) for s in slices]


async def test_decode_rows_come_before_prefill(make_job):
    prefill, decode = make_job(10), make_job(5, num_fed=4)
    slices = plan_step([prefill, decode], chunk_tokens=4, max_step_tokens=64)
    assert [s.job for s in slices] == [decode, prefill]
    assert spans(slices) == [(4, 5, True), (0, 4, False)]


async def test_prefill_is_cut_at_chunk_tokens(make_job):
    job = make_job(10)
    assert spans(plan_step([job], chunk_tokens=4, max_step_tokens=64)) == [(0, 4, False)]
    job.num_fed = 8
    assert spans(plan_step([job], chunk_tokens=4, max_step_tokens=64)) == [(8, 10, True)]


async def test_prefill_jobs_keep_arrival_order(make_job):
    a, b, c = make_job(3), make_job(6), make_job(2)
    slices = plan_step([a, b, c], chunk_tokens=4, max_step_tokens=64)
    assert [s.job for s in slices] == [a, b, c]
    assert spans(slices) == [(0, 3, True), (0, 4, False), (0, 2, True)]


async def test_token_budget_caps_the_step(make_job):
    decodes = [make_job(2, num_fed=1) for _ in range(3)]
    prefill, later = make_job(10), make_job(10)
    slices = plan_step([*decodes, prefill, later], chunk_tokens=4, max_step_tokens=6)
    assert sum(s.stop - s.start for s in slices) == 6
    # Three decode rows, then the first prefill gets the 3 tokens left; the second none.
    assert spans(slices) == [(1, 2, True)] * 3 + [(0, 3, False)]
    assert slices[-1].job is prefill


async def test_budget_smaller_than_decode_rows(make_job):
    jobs = [make_job(1) for _ in range(5)]
    slices = plan_step(jobs, chunk_tokens=4, max_step_tokens=3)
    assert [s.job for s in slices] == jobs[:3]
    assert all(s.samples for s in slices)


async def test_single_pending_token_is_a_decode_row(make_job):
    """A one-token append is scheduled like a decode row: ahead of longer prefills."""
    long, one = make_job(9), make_job(1)
    slices = plan_step([long, one], chunk_tokens=8, max_step_tokens=8)
    assert spans(slices) == [(0, 1, True), (0, 7, False)]
    assert slices[0].job is one


async def test_samples_iff_slice_reaches_end_of_inputs(make_job):
    job = make_job(5)
    assert not Slice(job, 0, 4).samples
    assert Slice(job, 0, 5).samples
    assert Slice(job, 4, 5).samples
    job.inputs.append(99)  # a sampled token joins the inputs: the old end no longer samples
    assert not Slice(job, 4, 5).samples


async def test_nothing_to_plan(make_job):
    assert plan_step([], chunk_tokens=4, max_step_tokens=8) == []


@pytest.mark.parametrize("seed", range(8))
async def test_random_workloads_always_progress_and_finish(make_job, seed):
    """Drives random jobs to completion the way the scheduler commits slices: every step makes
    progress within budget, never feeds a token twice, and samples exactly max_tokens per job."""
    rng = random.Random(seed)
    chunk = rng.randint(1, 8)
    budget = rng.randint(chunk, 16)
    jobs = [make_job(rng.randint(1, 30), max_tokens=rng.randint(1, 6)) for _ in range(rng.randint(1, 6))]
    running, steps = list(jobs), 0
    while running:
        slices = plan_step(running, chunk, budget)
        assert slices, "a step with running jobs planned nothing"
        assert sum(s.stop - s.start for s in slices) <= budget
        assert len({id(s.job) for s in slices}) == len(slices)  # one slice per job per step
        for s in slices:
            job = s.job
            assert s.start == job.num_fed and 0 < s.stop - s.start <= max(chunk, 1)
            job.num_fed = s.stop
            if s.samples:
                job.generated.append(7)
                job.inputs.append(7)
                if len(job.generated) == job.max_tokens:
                    running.remove(job)
        steps += 1
        assert steps < 1000
    for job in jobs:
        assert len(job.generated) == job.max_tokens
        assert job.num_fed == len(job.inputs) - 1  # the last sampled token is never fed


async def test_decode_rows_carry_their_drafts(make_job):
    decode, prefill = make_job(5, num_fed=4), make_job(10)
    slices = plan_step([prefill, decode], chunk_tokens=4, max_step_tokens=64, draft_rows=lambda job: 3)
    assert [(s.job, s.num_draft) for s in slices] == [(decode, 3), (prefill, 0)]
    assert spans(slices) == [(4, 5, True), (0, 4, False)]


async def test_drafts_share_the_token_budget(make_job):
    """Every decode row is planned first; drafts take what is left, before prefill chunks."""
    decodes = [make_job(2, num_fed=1) for _ in range(3)]
    prefill = make_job(10)
    slices = plan_step([*decodes, prefill], chunk_tokens=4, max_step_tokens=9, draft_rows=lambda job: 4)
    assert [s.num_draft for s in slices] == [4, 2, 0]
    assert sum(s.stop - s.start + s.num_draft for s in slices) == 9
    assert all(s.job is not prefill for s in slices)
    # With room to spare, the prefill chunk follows the drafts.
    slices = plan_step([*decodes, prefill], chunk_tokens=4, max_step_tokens=20, draft_rows=lambda job: 4)
    assert [s.num_draft for s in slices] == [4, 4, 4, 0] and spans(slices)[-1] == (0, 4, False)


@pytest.mark.parametrize("seed", range(6))
async def test_random_speculative_workloads_stay_in_budget(make_job, seed):
    """Random proposals and acceptances, committed as the scheduler does: rows never exceed the
    budget, each job gets exactly max_tokens tokens, and the last one is never fed."""
    rng = random.Random(100 + seed)
    chunk = rng.randint(2, 8)
    budget = rng.randint(chunk, 16)
    jobs = [make_job(rng.randint(1, 30), max_tokens=rng.randint(1, 12)) for _ in range(rng.randint(1, 6))]
    running = list(jobs)

    def draft_rows(job: Job) -> int:
        return min(rng.randint(0, 4), job.max_tokens - len(job.generated) - 1)

    for _ in range(1000):
        if not running:
            break
        slices = plan_step(running, chunk, budget, draft_rows)
        assert slices and sum(s.stop - s.start + s.num_draft for s in slices) <= budget
        for s in slices:
            job = s.job
            assert s.num_draft == 0 or s.stop - s.start == 1
            job.num_fed = s.stop
            if s.samples:
                emitted = [7] * (1 + rng.randint(0, s.num_draft))
                job.generated += emitted
                job.inputs += emitted
                job.num_fed = s.stop + len(emitted) - 1
                assert len(job.generated) <= job.max_tokens
                if len(job.generated) == job.max_tokens:
                    running.remove(job)
    assert not running
    for job in jobs:
        assert len(job.generated) == job.max_tokens
        assert job.num_fed == len(job.inputs) - 1
