"""Resident sessions for stateless HTTP clients, on a real tiny runtime: a request whose tokens
extend an idle session's history gets that session; anything else gets a new one; sessions are
never shared across API keys, never taken while busy, and closed when their history is unknown."""

from __future__ import annotations

import asyncio

import pytest

from actor_fixtures import TIMEOUT_S, append, assert_clean, collect, generate, load, prompt, started
from kakeya.runtime.common.config import SessionLimits
from kakeya.runtime.http.resident import ResidentSessions

EOS = frozenset({2})


@pytest.fixture(scope="module")
def tiny():
    return load()


async def leased(sessions: ResidentSessions, tokens: list[int], owner: str = "a"):
    """Acquires for `tokens`, appends what the session lacks, as a request would."""
    lease = await asyncio.wait_for(sessions.acquire(owner, EOS, tokens), TIMEOUT_S)
    await append(lease.session, tokens[len(lease.history):])
    lease.history = list(tokens)
    return lease


async def test_a_request_extending_an_idle_history_reuses_its_session(tiny):
    async with started(tiny) as stack:
        sessions = ResidentSessions(stack.registry)
        first = prompt(20, seed=1)
        lease = await leased(sessions, first)
        sessions.release(lease, reusable=True)
        longer = first + prompt(5, seed=2)
        again = await leased(sessions, longer)
        assert again.session is lease.session and again.reused_tokens == 20
        assert again.session.snapshot.history_length == 25 and stack.registry.num_active == 1
        sessions.release(again, reusable=False)
        await asyncio.wait_for(sessions.wait_closed(), TIMEOUT_S)
        assert_clean(stack)


async def test_only_a_strict_prefix_matches_and_the_longest_wins(tiny):
    async with started(tiny) as stack:
        sessions = ResidentSessions(stack.registry)
        base = prompt(12, seed=3)
        short, long = await leased(sessions, base[:6]), await leased(sessions, base)
        sessions.release(short, reusable=True)
        sessions.release(long, reusable=True)
        same = await asyncio.wait_for(sessions.acquire("a", EOS, base), TIMEOUT_S)  # equal, not longer
        assert same.session is short.session and same.reused_tokens == 6
        diverged = base[:5] + [base[5] + 1] + base[6:]
        fresh = await asyncio.wait_for(sessions.acquire("a", EOS, diverged + [7]), TIMEOUT_S)
        assert fresh.history == [] and fresh.session not in (short.session, long.session)
        best = await asyncio.wait_for(sessions.acquire("a", EOS, base + [9]), TIMEOUT_S)
        assert best.session is long.session and best.reused_tokens == 12
        for lease in (same, fresh, best):
            sessions.release(lease, reusable=False)
        await asyncio.wait_for(sessions.wait_closed(), TIMEOUT_S)
        assert_clean(stack)


async def test_another_api_key_or_other_eos_ids_never_get_the_session(tiny):
    async with started(tiny) as stack:
        sessions = ResidentSessions(stack.registry)
        tokens = prompt(10, seed=4)
        lease = await leased(sessions, tokens, owner="a")
        sessions.release(lease, reusable=True)
        other = await asyncio.wait_for(sessions.acquire("b", EOS, tokens + [5]), TIMEOUT_S)
        other_eos = await asyncio.wait_for(sessions.acquire("a", frozenset({3}), tokens + [5]), TIMEOUT_S)
        assert other.session is not lease.session and other_eos.session is not lease.session
        assert other.history == [] and other_eos.history == []
        await asyncio.wait_for(stack.registry.close_all(), TIMEOUT_S)


async def test_a_busy_or_evicted_session_is_not_reused(tiny):
    limits = SessionLimits(max_sessions=2)
    async with started(tiny, limits=limits) as stack:
        sessions = ResidentSessions(stack.registry)
        tokens = prompt(10, seed=5)
        lease = await leased(sessions, tokens)
        sessions.release(lease, reusable=True)
        stream = generate(lease.session, 4)  # a gRPC-style Generate keeps it busy
        busy = await asyncio.wait_for(sessions.acquire("a", EOS, tokens + [5]), TIMEOUT_S)
        assert busy.session is not lease.session
        await collect(stream)
        # The limit is full (2): a third session evicts the least recently used idle one.
        evicted_history = tokens + [5]
        sessions.release(busy, reusable=False)
        await asyncio.wait_for(sessions.wait_closed(), TIMEOUT_S)
        await asyncio.wait_for(stack.registry.close(lease.session.session_id), TIMEOUT_S)
        fresh = await asyncio.wait_for(sessions.acquire("a", EOS, evicted_history), TIMEOUT_S)
        assert fresh.history == [] and sessions.num_indexed() == 0
        await asyncio.wait_for(stack.registry.close_all(), TIMEOUT_S)


async def test_the_same_history_twice_keeps_one_session_and_closes_the_other(tiny):
    async with started(tiny) as stack:
        sessions = ResidentSessions(stack.registry)
        tokens = prompt(8, seed=6)
        one, two = await leased(sessions, tokens), await leased(sessions, tokens)
        sessions.release(one, reusable=True)
        sessions.release(two, reusable=True)
        await asyncio.wait_for(sessions.wait_closed(), TIMEOUT_S)
        assert stack.registry.num_active == 1 and sessions.num_indexed() == 1
        again = sessions.acquire_exact("a", EOS, one.session.session_id, tokens)
        assert again is two.session  # the copy that holds the same ids serves the first one's id
        await asyncio.wait_for(stack.registry.close_all(), TIMEOUT_S)
