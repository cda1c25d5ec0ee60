"""Speculative decoding on the CUDA path: drafts verified through the graphs give the plain greedy
stream with every session's verification rows in one forward, rollback is exact in deterministic
mode, and the n-gram proposer and a truncated draft model run there too.

Runs only where a CUDA device is present (the GPU machine); elsewhere every test is skipped.
"""

from __future__ import annotations

import random

import pytest
import torch

from cuda_models import CUDA, build, pool_for, prompt
from kakeya.runtime.engine.draft import DraftRequest, DraftRunner, truncated_draft
from kakeya.runtime.forward.session_kv import KVShape
from kakeya.runtime.engine.loader import describe
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.step import StepRow
from kakeya.runtime.speculative.ngram import NgramIndex
from kakeya.runtime.engine.sampler import Sampler, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="the CUDA path needs a CUDA device (run on the GPU machine)")
# Deterministic mode in bf16 (bitwise promise); fast mode in fp32, where batch shape cannot flip a token.
MODES = [pytest.param(True, torch.bfloat16, id="det-bf16"), pytest.param(False, torch.float32, id="fast-fp32")]
COUNT = 48


def greedy() -> Sampler:
    return Sampler(SamplingParams())


def decode_all(runner, kvs, prompts, propose) -> tuple[list[list[int]], int, int]:
    """Prefills every prompt in one step, then decodes all sessions together, one step each round,
    verifying propose(i, stream) drafts. Returns (streams, draft tokens, accepted draft tokens)."""
    streams = [[e[-1]] for e in runner.run([StepRow(kv, tuple(p), greedy()) for kv, p in zip(kvs, prompts)])]
    drafted = accepted = 0
    while any(len(s) < COUNT for s in streams):
        live = [i for i, s in enumerate(streams) if len(s) < COUNT]
        drafts = [tuple(propose(i, streams[i]))[:COUNT - len(streams[i]) - 1] for i in live]
        items = [StepRow(kvs[i], (streams[i][-1],), greedy(), d) for i, d in zip(live, drafts)]
        for i, draft, emitted in zip(live, drafts, runner.run(items)):
            assert 1 <= len(emitted) <= len(draft) + 1
            drafted += len(draft)
            accepted += len(emitted) - 1
            streams[i].extend(emitted)
    return streams, drafted, accepted


def sessions(pool, prompts):
    kvs = [pool.allocate() for _ in prompts]
    for kv, p in zip(kvs, prompts):
        pool.reserve(kv, len(p) + COUNT + 8)
    return kvs


@pytest.mark.parametrize("deterministic,dtype", MODES)
def test_verified_drafts_equal_plain_greedy_across_sessions(deterministic, dtype):
    loaded, _ = build(dtype)
    runner = ModelRunner(loaded, deterministic=deterministic)
    pool = pool_for(loaded)
    prompts = [prompt(4 + 9 * i, seed=50 + i) for i in range(6)]
    plain_kvs = sessions(pool, prompts)
    reference, _, _ = decode_all(runner, plain_kvs, prompts, lambda i, s: ())
    rng = random.Random(7)

    def from_reference(i, stream):  # drafts cut from the true stream, with errors
        truth = reference[i][len(stream):len(stream) + rng.randint(0, 5)]
        return [t if rng.random() < 0.7 else (t + 1) % 500 + 3 for t in truth]

    kvs = sessions(pool, prompts)
    streams, drafted, accepted = decode_all(runner, kvs, prompts, from_reference)
    assert streams == reference
    assert 0 < accepted < drafted
    for kv, plain in zip(kvs, plain_kvs):
        assert kv.num_positions == plain.num_positions
        if deterministic:  # exact rollback: bitwise what plain decoding wrote
            n = kv.num_resident
            assert torch.equal(kv.slab[..., :n, :], plain.slab[..., :n, :])
    runner.shutdown()


@pytest.mark.parametrize("deterministic,dtype", MODES)
def test_ngram_proposals_keep_the_plain_greedy_stream(deterministic, dtype):
    loaded, _ = build(dtype)
    runner = ModelRunner(loaded, deterministic=deterministic)
    pool = pool_for(loaded)
    # Prompts that repeat themselves, as agent traffic does, so the index has matches to offer.
    prompts = [(prompt(12, seed=i) * 4)[: 30 + 5 * i] for i in range(5)]
    reference, _, _ = decode_all(runner, sessions(pool, prompts), prompts, lambda i, s: ())
    indexes = [NgramIndex(max_n=3, min_n=2) for _ in prompts]
    for index, p in zip(indexes, prompts):
        index.extend(p)
    fed = [0] * len(prompts)

    def ngram(i, stream):
        indexes[i].extend(stream[fed[i]:])
        fed[i] = len(stream)
        return indexes[i].propose((), 4)

    streams, drafted, accepted = decode_all(runner, sessions(pool, prompts), prompts, ngram)
    assert streams == reference
    assert drafted > 0
    runner.shutdown()


def test_drafted_steps_among_run_ahead_steps_keep_the_plain_greedy_stream():
    """Host-side proposals keep run-ahead on: a step that verifies drafts drops the launched step,
    the steps between claim theirs, and the streams are plain greedy's (fast mode, fp32)."""
    loaded, _ = build(torch.float32)
    pool = pool_for(loaded)
    prompts = [prompt(6 + 7 * i, seed=60 + i) for i in range(4)]
    plain = ModelRunner(loaded, deterministic=False, run_ahead=False)
    reference, _, _ = decode_all(plain, sessions(pool, prompts), prompts, lambda i, s: ())
    plain.shutdown()
    runner = ModelRunner(loaded, deterministic=False, run_ahead=True)
    kvs = sessions(pool, prompts)
    streams = [[e[-1]] for e in runner.run([StepRow(kv, tuple(p), greedy()) for kv, p in zip(kvs, prompts)])]
    step = drafted = accepted = 0
    while any(len(s) < COUNT for s in streams):
        step += 1
        live = [i for i, s in enumerate(streams) if len(s) < COUNT]
        drafts = [()] * len(live)
        if step % 5 == 0:  # every session drafts true tokens, the second one wrong
            drafts = [tuple(t if k != 1 else (t + 1) % 500 + 3 for k, t in
                            enumerate(reference[i][len(streams[i]):len(streams[i]) + 3]))[:COUNT - len(streams[i]) - 1]
                      for i in live]
        items = [StepRow(kvs[i], (streams[i][-1],), greedy(), d) for i, d in zip(live, drafts)]
        for i, draft, emitted in zip(live, drafts, runner.run(items)):
            drafted += len(draft)
            accepted += len(emitted) - 1
            streams[i].extend(emitted)
    assert streams == reference
    assert 0 < accepted < drafted
    assert runner.run_ahead.num_claimed >= 10, "steps without drafts should claim launched steps"
    assert runner.run_ahead.num_dropped >= 2, "steps with drafts should drop them"
    runner.shutdown()


def test_truncated_draft_proposes_its_own_greedy_tokens_on_cuda():
    loaded, reference = build(torch.float32)
    verifier = ModelRunner(loaded, deterministic=False)
    draft = truncated_draft(loaded, 2)
    pool = pool_for(loaded)
    pool.draft_shape = KVShape(draft.num_layers, draft.num_kv_heads, draft.head_dim, draft.dtype, draft.device)
    runner = DraftRunner(draft, deterministic=False, executor=verifier.executor)
    tokens = [prompt(9, seed=1), prompt(40, seed=2)]
    kvs = sessions(pool, tokens)
    proposals = runner.propose([DraftRequest(kv.draft, tuple(t), 6, greedy()) for kv, t in zip(kvs, tokens)])
    reference_draft = truncated_draft(describe(reference, "ref", CUDA, torch.float32), 2).model
    for t, proposal in zip(tokens, proposals):
        with torch.no_grad():
            expected = reference_draft.generate(torch.tensor([t], device=CUDA), max_new_tokens=6, do_sample=False,
                                                eos_token_id=None, pad_token_id=0)
        assert proposal.tokens == tuple(expected[0, len(t):].tolist())
    verifier.shutdown()
