"""Run-ahead decoding (runtime/run_ahead.py): launching the next greedy step early changes no token.

GPU only; elsewhere every test is skipped with the reason. The driver below plays the scheduler:
sessions stop at different lengths (the launched step then has rows nobody claims), one joins
late (the launched step is dropped) and one samples (no run-ahead while it runs).
"""

from __future__ import annotations

import pytest
import torch

from cuda_models import build, pool_for, prompt
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.step import StepRow, StopRule
from kakeya.runtime.engine.sampler import Sampler, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="the CUDA path needs a CUDA device (run on the GPU machine)")


def drive(runner: ModelRunner, prompts, counts, joins, sampling,
          mark_final: bool = False) -> tuple[list[list[int]], list[int]]:
    """Streams and final slab positions; session i joins at step joins[i] and stops after counts[i]
    tokens. mark_final: flag each session's last token, as the scheduler does for max_tokens."""
    pool = pool_for(runner.loaded)
    kvs = [pool.allocate() for _ in prompts]
    for kv, p, n in zip(kvs, prompts, counts):
        pool.reserve(kv, len(p) + n)
    samplers = [Sampler(params) for params in sampling]
    streams: list[list[int]] = [[] for _ in prompts]
    step = 0
    while any(len(s) < n for s, n in zip(streams, counts)):
        items, owners = [], []
        for i, p in enumerate(prompts):
            if step < joins[i] or len(streams[i]) >= counts[i]:
                continue
            tokens = tuple(p) if not streams[i] else (streams[i][-1],)
            final = mark_final and len(streams[i]) + 1 >= counts[i]
            items.append(StepRow(kvs[i], tokens, samplers[i], stop=StopRule(frozenset(), 1) if final else None))
            owners.append(i)
        for i, emitted in zip(owners, runner.run(items)):
            streams[i].extend(emitted)
        step += 1
    positions = [kv.num_positions for kv in kvs]
    for kv in kvs:
        pool.free(kv)
    return streams, positions


def test_run_ahead_gives_the_plain_streams_in_float32():
    loaded, _ = build(torch.float32)
    prompts = [prompt(n, seed=40 + n) for n in (5, 33, 70, 12, 19)]
    counts = [24, 6, 15, 24, 10]
    joins = [0, 0, 0, 9, 17]  # session 3 joins mid-stream; session 4 joins after session 1 stopped
    greedy = [SamplingParams()] * 4 + [SamplingParams(temperature=0.8, seed=7)]
    results, outcomes = [], []
    for run_ahead, mark_final in ((False, False), (True, False), (True, True)):
        runner = ModelRunner(loaded, deterministic=False, run_ahead=run_ahead)
        results.append(drive(runner, prompts, counts, joins, greedy, mark_final))
        if run_ahead:
            outcomes.append((runner.run_ahead.num_claimed, runner.run_ahead.num_dropped))
            # Once every session took its last token nothing is left running ahead, if they said so.
            assert (runner.run_ahead._launched is None) == mark_final
        runner.shutdown()
    (plain, plain_positions), (ahead, ahead_positions), (finals, finals_positions) = results
    (claimed, dropped), (_, finals_dropped) = outcomes
    assert ahead == plain and finals == plain
    assert finals_positions == plain_positions
    assert finals_dropped <= dropped
    assert [len(s) for s in ahead] == counts
    # Every committed token but the last was fed: the slab holds exactly the session's positions.
    assert ahead_positions == plain_positions == [len(p) + n - 1 for p, n in zip(prompts, counts)]
    assert claimed >= 10, "most decode steps should have been launched ahead"
    assert dropped >= 2, "the joins should have dropped a launched step"


def test_run_ahead_is_off_in_deterministic_mode_and_without_graphs():
    loaded, _ = build(torch.bfloat16)
    for options in (dict(deterministic=True), dict(deterministic=False, cuda_graphs=False)):
        runner = ModelRunner(loaded, run_ahead=True, **options)
        assert runner.run_ahead is None
        runner.shutdown()
