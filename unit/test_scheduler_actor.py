"""The scheduler actor, driven through sessions on a real tiny model: sessions batched into one
forward each get exactly their solo tokens, stop() lets running Generates finish, a full mailbox
answers Overloaded, and a failing model thread fails every Generate in flight with EngineDead."""

from __future__ import annotations

import asyncio

import pytest

from actor_fixtures import (TIMEOUT_S, append, assert_clean, collect, generate, load, next_token, open_session,
                            prompt, send_append, started)
from kakeya.actors.token_stream import StopReason
from kakeya.runtime.common.errors import EngineDead, InvariantViolation, Overloaded
from kakeya.runtime.engine.sampler import SamplingParams


@pytest.fixture(scope="module")
def tiny():
    return load()


async def close(stack, session) -> int:
    return await asyncio.wait_for(stack.registry.close(session.session_id), TIMEOUT_S)


@pytest.mark.parametrize("speculative", ["none", "ngram"])
async def test_concurrent_sessions_each_get_their_solo_tokens(tiny, speculative):
    """Prompts of 3 to 21 tokens (up to three prefill chunks) next to each other's decode rows."""
    prompts = [prompt(n, 40 + i) for i, n in enumerate((3, 9, 14, 21))]
    counts = [24, 17, 20, 12]
    async with started(tiny, speculative=speculative) as stack:
        sessions = [await open_session(stack, p) for p in prompts]
        streams = [generate(s, n) for s, n in zip(sessions, counts)]  # all sent before any runs
        results = await asyncio.wait_for(asyncio.gather(*(collect(s) for s in streams)), TIMEOUT_S)
        for p, n, (tokens, done) in zip(prompts, counts, results):
            assert tokens == tiny.solo(p, n)
            assert done.stop_reason == StopReason.MAX_TOKENS
        assert len({tuple(tokens) for tokens, _ in results}) == 4  # a mix-up of rows would show
        info = stack.runtime.info()
        assert info["max_sessions_per_forward"] >= 2  # they really shared forwards
        assert info["forward_count"] < sum(counts)
        for s in sessions:
            await close(stack, s)
        assert_clean(stack)


async def test_a_session_joining_mid_stream_changes_no_ones_tokens(tiny):
    early, late = prompt(6, 50), prompt(21, 51)
    async with started(tiny) as stack:
        a = await open_session(stack, early)
        b = await open_session(stack, late)
        stream_a = generate(a, 40)
        events = stream_a.__aiter__()
        head = [await next_token(events) for _ in range(5)]
        stream_b = generate(b, 12)  # prefilled in chunks while a decodes
        (rest_a, _), (tokens_b, _) = await asyncio.wait_for(
            asyncio.gather(collect(stream_a), collect(stream_b)), TIMEOUT_S)
        assert head + rest_a == tiny.solo(early, 40)
        assert tokens_b == tiny.solo(late, 12)
        assert stack.runtime.info()["max_sessions_per_forward"] == 2
        await close(stack, a)
        await close(stack, b)
        assert_clean(stack)


async def test_seeded_sampling_is_the_same_alone_and_batched(tiny):
    tokens = prompt(10, 52)
    sampling = SamplingParams(temperature=1.0, seed=7)
    async with started(tiny) as stack:
        alone = await open_session(stack, tokens)
        sampled, _ = await collect(generate(alone, 20, sampling))
        assert sampled != tiny.solo(tokens, 20)  # it really sampled
        others = [await open_session(stack, prompt(n, 53 + n)) for n in (4, 17)]
        batched = await open_session(stack, tokens)
        streams = [generate(s, 20) for s in others] + [generate(batched, 20, sampling)]
        results = await asyncio.wait_for(asyncio.gather(*(collect(s) for s in streams)), TIMEOUT_S)
        assert results[-1][0] == sampled
        reseeded = await open_session(stack, tokens)
        other_seed, _ = await collect(generate(reseeded, 20, SamplingParams(temperature=1.0, seed=8)))
        assert other_seed != sampled
        for s in [alone, *others, batched, reseeded]:
            await close(stack, s)
        assert_clean(stack)


async def test_a_full_scheduler_mailbox_fails_the_generate_with_overloaded(tiny):
    prompts = [prompt(5, 60 + i) for i in range(3)]
    async with started(tiny, mailbox_size=1) as stack:
        sessions = [await open_session(stack, p) for p in prompts]
        # Each session asks the scheduler for KV in the same turn of the loop; only the first
        # request finds room.
        streams = [generate(s, 6) for s in sessions]
        first, *rest = streams
        tokens, _ = await collect(first)
        assert tokens == tiny.solo(prompts[0], 6)
        for stream in rest:
            with pytest.raises(Overloaded, match="scheduler mailbox is full"):
                await collect(stream)
        # The sessions live on: a retry succeeds.
        for session, p in zip(sessions[1:], prompts[1:]):
            tokens, _ = await collect(generate(session, 6))
            assert tokens == tiny.solo(p, 6)
        for s in sessions:
            await close(stack, s)
        assert_clean(stack)


async def test_stop_ends_an_idle_scheduler_and_later_generates_fail_with_engine_dead(tiny):
    tokens = prompt(7, 64)
    async with started(tiny) as stack:
        session = await open_session(stack, tokens)
        generated, _ = await collect(generate(session, 8))
        assert generated == tiny.solo(tokens, 8)
        assert stack.scheduler.is_alive
        await asyncio.wait_for(stack.scheduler.stop(), TIMEOUT_S)
        assert not stack.scheduler.is_alive
        with pytest.raises(EngineDead):
            await collect(generate(session, 4))
        fresh = await open_session(stack, tokens)
        with pytest.raises(EngineDead):
            await collect(generate(fresh, 4))
        assert stack.crashes == []  # a stop is not a crash
        assert await append(session, [5]) == 7 + 8 + 1  # the session actor itself is fine
        assert await close(stack, session) == 16
        assert stack.runtime.info()["cache_invariant_inv1_violations"] == 0


async def test_stop_lets_a_running_generate_finish_then_ends_the_scheduler(tiny):
    tokens = prompt(7, 64)
    async with started(tiny) as stack:
        session = await open_session(stack, tokens)
        stream = generate(session, 32)
        first = await next_token(stream.__aiter__())
        stopping = asyncio.ensure_future(stack.scheduler.stop())
        rest, done = await collect(stream)
        assert [first, *rest] == tiny.solo(tokens, 32)  # the running Generate finishes
        assert done.stop_reason == StopReason.MAX_TOKENS
        await asyncio.wait_for(stopping, TIMEOUT_S)  # the work is done: it ends now
        assert not stack.scheduler.is_alive


async def test_a_failing_model_thread_fails_every_generate_in_flight_with_engine_dead(tiny):
    prompts = [prompt(9, 65), prompt(5, 66)]
    async with started(tiny) as stack:
        sessions = [await open_session(stack, p) for p in prompts]
        streams = [generate(s, 200) for s in sessions]
        heads = [[await next_token(stream.__aiter__())] for stream in streams]  # both are running
        device_lost = RuntimeError("device lost")
        stack.runner.fault_error = device_lost
        for p, stream, head in zip(prompts, streams, heads):
            events = stream.__aiter__()
            with pytest.raises(EngineDead, match="device lost"):
                while True:
                    head.append(await next_token(events))
            assert len(head) < 200
            assert head == tiny.solo(p, len(head))  # what was streamed before was right
        assert stack.crashes == [device_lost]  # reported once, to the owner
        assert not stack.scheduler.is_alive
        fresh = await open_session(stack, prompts[0])
        with pytest.raises(EngineDead):
            await collect(generate(fresh, 4))
        # The sessions still answer and close.
        assert await asyncio.wait_for(send_append(fresh, [3]), TIMEOUT_S) == 10
        for s in [*sessions, fresh]:
            await close(stack, s)
        assert stack.registry.num_active == 0


async def test_after_the_engine_died_mid_generate_the_next_generate_fails_with_engine_dead(tiny):
    tokens = prompt(9, 67)
    async with started(tiny) as stack:
        session = await open_session(stack, tokens)
        stream = generate(session, 200)
        await next_token(stream.__aiter__())
        stack.runner.fault_error = RuntimeError("device lost")
        with pytest.raises(EngineDead):
            await collect(stream)
        with pytest.raises(EngineDead):
            await collect(generate(session, 4))
        assert stack.runtime.info()["cache_invariant_inv1_violations"] == 0


async def test_a_consumer_that_stops_reading_is_cut_off(tiny):
    tokens = prompt(8, 68)
    async with started(tiny, consumer_stall_timeout_s=0.05) as stack:
        session = await open_session(stack, tokens)
        stream = generate(session, 400)  # hundreds of steps: far longer than the stall timeout
        # Nobody reads the stream; an Append queued behind the Generate answers once it ended.
        history = await asyncio.wait_for(send_append(session, [3]), TIMEOUT_S)
        generated, done = await collect(stream)
        assert done.stop_reason == StopReason.CANCELLED
        assert 0 < len(generated) < 400
        assert generated == tiny.solo(tokens, len(generated))
        assert history == 8 + len(generated) + 1
        assert stack.runtime.counter("kakeya_stream_stalled_total") == 1
        await close(stack, session)
        assert_clean(stack)
