"""Suffix speculation on a real tiny model: greedy streams equal plain greedy decoding token for
token (CPU deterministic mode), with drafts verified from the session's own history and from other
sessions' outputs, with and without the adaptive cut; and sessions leave no proposer state behind."""

from __future__ import annotations

import asyncio

import pytest

from actor_fixtures import TIMEOUT_S, assert_clean, collect, generate, load, open_session, prompt, started


@pytest.fixture(scope="module")
def tiny():
    return load()


def echoing(length: int, seed: int) -> list[int]:
    """A prompt that repeats itself, as code and tool output do: drafts find matches at once."""
    part = prompt(length, seed)
    return part + prompt(3, seed + 100) + part + part[:5]


async def run(tiny, speculative: str, prompts: list[list[int]], count: int, adaptive: bool = True):
    async with started(tiny, speculative=speculative) as stack:
        if stack.runtime.speculator.suffix is not None:
            stack.runtime.speculator.suffix.adaptive = adaptive
        sessions = [await open_session(stack, p) for p in prompts]
        first = await asyncio.wait_for(asyncio.gather(*(collect(generate(s, count)) for s in sessions)), TIMEOUT_S)
        # A second turn: the history now holds the first turn's output, and the shared outputs every session's.
        second = await asyncio.wait_for(asyncio.gather(*(collect(generate(s, count)) for s in sessions)), TIMEOUT_S)
        for s in sessions:
            await asyncio.wait_for(stack.registry.close(s.session_id), TIMEOUT_S)
        assert_clean(stack)
        if stack.runtime.speculator.suffix is not None:
            assert len(stack.runtime.speculator.suffix) == 0  # every session's index went with its slab
        return [tokens for tokens, _ in first + second], sum(done.draft_token_count for _, done in first + second)


@pytest.mark.parametrize("adaptive", [False, True])
async def test_greedy_suffix_streams_equal_plain_greedy(tiny, adaptive):
    prompts = [echoing(n, 60 + n) for n in (6, 11, 17)] + [prompt(9, 70)]
    plain, _ = await run(tiny, "none", prompts, 24)
    speculated, drafted = await run(tiny, "suffix", prompts, 24, adaptive)
    assert speculated == plain
    for p, tokens in zip(prompts, plain):
        assert tokens == tiny.solo(p, 24)
    if not adaptive:
        assert drafted > 0  # the drafts were really verified


async def test_a_session_uses_another_sessions_output(tiny):
    """Two sessions with the same prompt, one after the other: the second drafts the first's output."""
    p = prompt(12, 80)
    async with started(tiny, speculative="suffix") as stack:
        stack.runtime.speculator.suffix.adaptive = False
        a = await open_session(stack, p)
        tokens_a, _ = await collect(generate(a, 20))
        b = await open_session(stack, p)
        tokens_b, done_b = await collect(generate(b, 20))
        assert tokens_a == tokens_b == tiny.solo(p, 20)
        assert done_b.accepted_draft_token_count >= 10
        for s in (a, b):
            await asyncio.wait_for(stack.registry.close(s.session_id), TIMEOUT_S)
        assert_clean(stack)
