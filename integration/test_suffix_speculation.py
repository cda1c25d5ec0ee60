"""Suffix speculation over gRPC on the embedded model: greedy streams equal plain greedy.

Deterministic mode (the CPU default) makes every row's logits independent of the batch, so a
verified stream must equal the plain runtime's token for token: with the adaptive cut on, with
it off (every proposal verified), and on a second pass where every session's earlier output is in
the shared outputs. Seeded sampling stays reproducible: it is not drafted for.
"""

from __future__ import annotations

import asyncio

import pytest

from .harness import TIMEOUT_S, start_server
from .test_speculative import MAX_TOKENS, _run, _run_all, plain, prompts  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
async def suffix_server(loaded_model):
    handle = await start_server(loaded_model, speculative={"mode": "suffix", "num_draft_tokens": 4})
    yield handle
    await asyncio.wait_for(handle.stop(), TIMEOUT_S)


def _assert_identical(results, plain) -> None:
    for index, (result, reference) in enumerate(zip(results, plain)):
        assert result.tokens == reference, f"prompt {index}"
        assert result.done.accepted_draft_token_count <= result.done.draft_token_count


async def test_adaptive_suffix_greedy_streams_equal_plain_greedy(suffix_server, prompts, plain):
    """20 prompts x 80 tokens, concurrent, drafts cut by the measured row cost."""
    _assert_identical(await _run_all(suffix_server.stub, prompts), plain)
    speculator = suffix_server.runtime.speculator
    assert speculator.stats.steps > 0 and speculator.stats.decode_rows > 0


async def test_every_suffix_proposal_verified_keeps_greedy_streams(suffix_server, prompts, plain):
    """Adaptation off: every walk is verified. Echoed code is mostly accepted; on the second pass
    the shared outputs hold every prompt's earlier stream, and they are drafted from."""
    suffix = suffix_server.runtime.speculator.suffix
    suffix.adaptive = False
    # Five agent-style prompts and three chat ones: two more passes over all twenty would double
    # this file's time for the same code paths.
    picks = list(range(5)) + list(range(10, 13))
    chosen, expected = [prompts[i] for i in picks], [plain[i] for i in picks]
    try:
        results = await _run_all(suffix_server.stub, chosen)
        _assert_identical(results, expected)
        agent = results[:5]
        assert sum(r.done.accepted_draft_token_count for r in agent) > 0.3 * MAX_TOKENS * len(agent)
        again = await _run_all(suffix_server.stub, chosen)
        _assert_identical(again, expected)
        accepted = sum(r.done.accepted_draft_token_count for r in again)
        assert accepted > 0.6 * MAX_TOKENS * len(chosen), "the shared outputs should predict a repeated request"
    finally:
        suffix.adaptive = True
    assert suffix_server.runtime.pool.used_bytes == 0 and len(suffix) == 0


async def test_sampled_suffix_speculation_is_reproducible_with_a_seed(suffix_server, prompts):
    """Suffix drafts depend on other sessions and on step timing, and what rejection sampling draws
    depends on the draft: a seeded request is not drafted for, so its stream repeats."""
    picks = [prompts[5], prompts[12]]
    sampling = dict(temperature=0.8, top_p=0.95, seed=1234)
    first = await _run_all(suffix_server.stub, picks, max_tokens=16, **sampling)
    second = await _run_all(suffix_server.stub, picks, max_tokens=16, **sampling)
    assert [r.tokens for r in first] == [r.tokens for r in second]
    assert sum(r.done.draft_token_count for r in first + second) == 0
    other = await _run(suffix_server.stub, picks[0], max_tokens=16, temperature=0.8, top_p=0.95, seed=99)
    assert other.tokens != first[0].tokens
