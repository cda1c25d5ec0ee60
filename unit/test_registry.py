"""The session registry on a real tiny model: sessions are found and listed only by their owner,
closing frees their KV at once, and when the session limit or the KV budget is full the least
recently used idle session is evicted, never one with work in flight."""

from __future__ import annotations

import asyncio

import pytest

from actor_fixtures import (BYTES_PER_TOKEN, TIMEOUT_S, append, assert_clean, collect, generate, load, next_token,
                            open_session, prompt, started)
from kakeya.actors.token_stream import StopReason
from kakeya.runtime.common.config import SessionLimits
from kakeya.runtime.common.errors import Overloaded, SessionNotFound, Unavailable


@pytest.fixture(scope="module")
def tiny():
    return load()


async def close(stack, session_id: str, **kwargs) -> int:
    return await asyncio.wait_for(stack.registry.close(session_id, **kwargs), TIMEOUT_S)


def evicted(stack, reason: str = "lru") -> int:
    return stack.runtime.counter("kakeya_session_evicted_total", reason=reason)


async def test_a_session_is_found_only_by_its_owner(tiny):
    async with started(tiny) as stack:
        registry = stack.registry
        alice = await asyncio.wait_for(registry.create("a", frozenset(), owner="alice"), TIMEOUT_S)
        other = await asyncio.wait_for(registry.create("b", frozenset(), owner="bob"), TIMEOUT_S)
        assert alice != other and len(alice) == 32 and int(alice, 16) >= 0
        assert registry.num_active == 2
        assert registry.get(alice, "alice").owner == "alice"
        assert registry.get(alice).session_id == alice  # no owner given: any session
        with pytest.raises(SessionNotFound) as foreign:
            registry.get(alice, "bob")
        with pytest.raises(SessionNotFound) as unknown:
            registry.get("0" * 32, "bob")
        # Another owner's session reads exactly like a missing one, so ids cannot be probed.
        assert str(foreign.value).replace(alice, "0" * 32) == str(unknown.value)
        with pytest.raises(SessionNotFound):
            await close(stack, alice, owner="bob")
        assert registry.get(alice, "alice").is_alive
        assert await close(stack, alice, owner="alice") == 0
        with pytest.raises(SessionNotFound):
            registry.get(alice)
        assert registry.num_active == 1
        await close(stack, other)
        assert_clean(stack)


async def test_an_owner_lists_its_own_sessions_oldest_first(tiny):
    async with started(tiny) as stack:
        registry = stack.registry
        ids = [await asyncio.wait_for(registry.create(label, frozenset(), owner=owner), TIMEOUT_S)
               for label, owner in (("a1", "alice"), ("b1", "bob"), ("a2", "alice"))]
        assert [s.session_id for s in registry.owned_by("alice")] == [ids[0], ids[2]]
        assert [s.client_label for s in registry.owned_by("bob")] == ["b1"]
        assert registry.owned_by("carol") == []
        for session_id in ids:
            await close(stack, session_id)
        assert registry.owned_by("alice") == []
        assert_clean(stack)


async def test_close_frees_the_sessions_kv_at_once(tiny):
    async with started(tiny) as stack:
        pa, pb = prompt(9, 20), prompt(14, 21)
        a, b = await open_session(stack, pa), await open_session(stack, pb)
        (ta, _), (tb, _) = await asyncio.wait_for(asyncio.gather(collect(generate(a, 10)), collect(generate(b, 10))),
                                                  TIMEOUT_S)
        assert (ta, tb) == (tiny.solo(pa, 10), tiny.solo(pb, 10))
        held_a, held_b = a.snapshot.kv_live_bytes, b.snapshot.kv_live_bytes
        assert held_a > 0 and held_b > 0
        assert stack.pool.used_bytes == held_a + held_b
        assert await close(stack, a.session_id) == 19
        assert stack.pool.used_bytes == held_b
        assert not a.is_alive
        with pytest.raises(SessionNotFound):
            await close(stack, a.session_id)
        assert await close(stack, b.session_id) == 24
        assert stack.runtime.counter("kakeya_session_total", outcome="closed") == 2
        # A client's close is not an eviction: the eviction counter has no such reason.
        assert evicted(stack) == 0 and evicted(stack, "close") == 0
        assert_clean(stack)


async def test_closing_a_generating_session_cancels_it_and_keeps_the_streamed_tokens(tiny):
    tokens = prompt(8, 22)
    async with started(tiny) as stack:
        session = await open_session(stack, tokens)
        stream = generate(session, 200)
        events = stream.__aiter__()
        head = [await next_token(events) for _ in range(2)]
        final_length = await close(stack, session.session_id)
        rest, done = await collect(stream)
        assert done.stop_reason == StopReason.CANCELLED
        assert done.generated_token_count == len(head + rest) < 200
        assert head + rest == tiny.solo(tokens, len(head + rest))
        assert final_length == 8 + len(head + rest)
        assert_clean(stack)


async def test_the_session_limit_evicts_the_least_recently_used_idle_session(tiny):
    async with started(tiny, limits=SessionLimits(max_sessions=2)) as stack:
        a = await open_session(stack, prompt(5, 23))
        b = await open_session(stack, prompt(6, 24))
        await collect(generate(b, 4))
        assert stack.pool.used_bytes > 0  # b holds KV
        await append(a, [7])  # a is now the most recently used
        c = await open_session(stack)
        with pytest.raises(SessionNotFound):
            stack.registry.get(b.session_id)
        assert not b.is_alive
        assert stack.registry.get(a.session_id) is a and stack.registry.get(c.session_id) is c
        assert stack.registry.num_active == 2
        assert stack.pool.used_bytes == 0  # b's KV went with it; a and c never generated
        assert evicted(stack) == 1
        assert stack.runtime.counter("kakeya_session_total", outcome="evicted") == 1
        await close(stack, a.session_id)
        await close(stack, c.session_id)
        assert_clean(stack)


async def test_a_full_session_limit_with_every_session_busy_is_overloaded(tiny):
    tokens = prompt(6, 25)
    async with started(tiny, limits=SessionLimits(max_sessions=1)) as stack:
        busy = await open_session(stack, tokens)
        stream = generate(busy, 200)
        await next_token(stream.__aiter__())  # busy is inside its Generate
        with pytest.raises(Overloaded, match="all 1 sessions are busy"):
            await asyncio.wait_for(stack.registry.create("late", frozenset()), TIMEOUT_S)
        assert stack.registry.get(busy.session_id) is busy
        stream.cancel()
        await collect(stream)
        assert evicted(stack) == 0
        # Idle now: the next create evicts it.
        fresh = await open_session(stack)
        with pytest.raises(SessionNotFound):
            stack.registry.get(busy.session_id)
        assert evicted(stack) == 1
        await close(stack, fresh.session_id)
        assert_clean(stack)


async def test_a_full_kv_budget_evicts_the_least_recently_used_idle_session(tiny):
    # Each session below reserves 16 positions (8 prompt + 8 generated): 16 * BYTES_PER_TOKEN.
    # The budget holds one and a half of them.
    budget = 24 * BYTES_PER_TOKEN
    async with started(tiny, kv_budget_bytes=budget) as stack:
        assert stack.runtime.info()["kv_bytes_per_token"] == BYTES_PER_TOKEN
        old, recent = prompt(8, 26), prompt(8, 27)
        a = await open_session(stack, old)
        generated_a, _ = await collect(generate(a, 8))
        assert generated_a == tiny.solo(old, 8)
        assert stack.pool.used_bytes == 16 * BYTES_PER_TOKEN
        b = await open_session(stack, recent)
        generated_b, _ = await collect(generate(b, 8))
        assert generated_b == tiny.solo(recent, 8)
        with pytest.raises(SessionNotFound):
            stack.registry.get(a.session_id)
        assert evicted(stack) == 1
        assert stack.pool.used_bytes == b.snapshot.kv_live_bytes == 16 * BYTES_PER_TOKEN
        await close(stack, b.session_id)
        assert_clean(stack)


async def test_a_full_kv_budget_with_no_idle_session_fails_the_generate_with_overloaded(tiny):
    # The busy session reserves 112 positions (8 + 100, rounded to blocks of 16); 8 more are free,
    # and the second session needs 16.
    budget = (112 + 8) * BYTES_PER_TOKEN
    long, short = prompt(8, 28), prompt(8, 29)
    async with started(tiny, kv_budget_bytes=budget) as stack:
        busy = await open_session(stack, long)
        stream = generate(busy, 100)
        events = stream.__aiter__()
        first = await next_token(events)
        other = await open_session(stack, short)
        with pytest.raises(Overloaded, match="KV budget exhausted"):
            await collect(generate(other, 8))
        assert stack.registry.get(busy.session_id) is busy  # busy sessions are never evicted
        assert evicted(stack) == 0
        rest, done = await collect(stream)  # undisturbed
        assert [first, *rest] == tiny.solo(long, 100)
        assert done.stop_reason == StopReason.MAX_TOKENS
        # Once idle, it makes way.
        generated, _ = await collect(generate(other, 8))
        assert generated == tiny.solo(short, 8)
        with pytest.raises(SessionNotFound):
            stack.registry.get(busy.session_id)
        assert evicted(stack) == 1
        await close(stack, other.session_id)
        assert_clean(stack)


async def test_close_all_ends_every_session_and_returns_every_byte(tiny):
    async with started(tiny) as stack:
        idle = await open_session(stack, prompt(5, 30))
        await collect(generate(idle, 3))
        running = await open_session(stack, prompt(5, 31))
        stream = generate(running, 200)
        queued = generate(running, 5)  # waits its turn behind the first
        await next_token(stream.__aiter__())
        assert stack.pool.used_bytes > 0
        await asyncio.wait_for(stack.registry.close_all(), TIMEOUT_S)
        # The drain stopped them, not their client: they fail Unavailable (UNAVAILABLE on the
        # wire, so the client retries elsewhere) rather than end as a client's own cancel.
        for cut in (stream, queued):
            with pytest.raises(Unavailable, match="the server is shutting down"):
                await collect(cut)
        assert not idle.is_alive and not running.is_alive
        assert stack.runtime.counter("kakeya_session_total", outcome="closed") == 2
        assert_clean(stack)


async def test_a_clients_close_during_generate_still_ends_it_cancelled(tiny):
    async with started(tiny) as stack:
        session = await open_session(stack, prompt(5, 32))
        stream = generate(session, 200)
        await next_token(stream.__aiter__())
        await close(stack, session.session_id)
        _, done = await collect(stream)
        assert done.stop_reason == StopReason.CANCELLED
        assert_clean(stack)
