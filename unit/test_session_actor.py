"""The session actor on a real tiny model: its Generates give the plain model's greedy tokens,
its messages run one at a time in order, a cancelled Generate stops within a step and keeps
what it streamed, and bad requests change nothing."""

from __future__ import annotations

import asyncio

import pytest

from actor_fixtures import (TIMEOUT_S, CancelAfter, append, assert_clean, collect, generate, load, next_token,
                            open_session, prompt, send_append, started)
from kakeya.actors.messages import Generate, GenerateParams
from kakeya.actors.token_stream import StopReason, TokenStream
from kakeya.runtime.common.config import SessionLimits
from kakeya.runtime.common.errors import FailedPrecondition, InvalidRequest, Overloaded, SessionNotFound
from kakeya.runtime.engine.sampler import SamplingParams


@pytest.fixture(scope="module")
def tiny():
    return load()


async def close(stack, session) -> int:
    return await asyncio.wait_for(stack.registry.close(session.session_id), TIMEOUT_S)


@pytest.mark.parametrize("speculative", ["none", "ngram"])
async def test_generate_gives_the_solo_greedy_tokens(tiny, speculative):
    """A 13-token prompt (two prefill chunks) and 24 tokens; n-gram drafts change nothing."""
    tokens = prompt(13, 2)
    async with started(tiny, speculative=speculative) as stack:
        session = await open_session(stack, tokens)
        generated, done = await collect(generate(session, 24))
        assert generated == tiny.solo(tokens, 24)
        assert (done.stop_reason, done.generated_token_count, done.prefill_token_count) == (
            StopReason.MAX_TOKENS, 24, 13)
        if speculative == "ngram":
            assert done.draft_token_count > 0  # the repetitive stream was proposed and verified
        snap = session.snapshot
        assert snap.history_length == 37
        assert snap.pending_tokens == 1  # the last sampled token is fed by the next Generate
        assert snap.kv_resident_tokens == 36
        assert snap.kv_live_bytes > 0 and snap.kv_live_bytes == stack.pool.used_bytes
        assert (snap.inv1_violations, snap.inv2_violations) == (0, 0)
        assert await close(stack, session) == 37
        assert_clean(stack)


async def test_eos_ends_the_generate_at_the_first_stop_token(tiny):
    tokens = prompt(9, 3)
    solo = tiny.solo(tokens, 16)
    stop_at = solo.index(solo[4])  # the first occurrence of that token
    async with started(tiny) as stack:
        session = await open_session(stack, tokens, eos=frozenset({solo[stop_at]}))
        generated, done = await collect(generate(session, 16))
        assert generated == solo[:stop_at + 1]
        assert done.stop_reason == StopReason.EOS
        assert done.generated_token_count == stop_at + 1
        assert session.snapshot.history_length == len(tokens) + stop_at + 1
        await close(stack, session)
        assert_clean(stack)


async def test_a_second_generate_waits_for_the_first_and_continues_its_history(tiny):
    tokens = prompt(11, 4)
    async with started(tiny) as stack:
        session = await open_session(stack, tokens)
        first, second = generate(session, 8), generate(session, 8)
        first_done_at_second_start: list[bool] = []

        async def read_second():
            events = second.__aiter__()
            token = await next_token(events)
            first_done_at_second_start.append(first.is_finished)
            rest, done = await collect(second)
            return [token, *rest], done

        (a, done_a), (b, done_b) = await asyncio.wait_for(asyncio.gather(collect(first), read_second()), TIMEOUT_S)
        assert first_done_at_second_start == [True]
        assert a + b == tiny.solo(tokens, 16)
        assert done_a.prefill_token_count == 11
        assert done_b.prefill_token_count == 1  # only the first Generate's last token was still unfed
        await close(stack, session)
        assert_clean(stack)


async def test_appends_keep_their_order_and_queue_behind_a_generate(tiny):
    parts = [prompt(4, 5), prompt(5, 6), prompt(3, 7)]
    whole = [t for part in parts for t in part]
    async with started(tiny) as stack:
        session = await open_session(stack)
        replies = [send_append(session, part) for part in parts]  # all queued before any is handled
        assert await asyncio.wait_for(asyncio.gather(*replies), TIMEOUT_S) == [4, 9, 12]
        stream = generate(session, 6)
        extra = prompt(2, 8)
        after = send_append(session, extra)  # queued behind the Generate: runs after it
        generated, _ = await collect(stream)
        assert generated == tiny.solo(whole, 6)
        assert await asyncio.wait_for(after, TIMEOUT_S) == 12 + 6 + 2
        more, done = await collect(generate(session, 5))
        assert more == tiny.solo(whole + generated + extra, 5)
        assert done.prefill_token_count == 3  # the last generated token and the two appended
        await close(stack, session)
        assert_clean(stack)


async def test_cancel_stops_the_generate_within_one_step(tiny):
    tokens = prompt(7, 9)
    async with started(tiny) as stack:
        session = await open_session(stack, tokens)
        stream = CancelAfter(3)
        session.send(Generate(GenerateParams(200, SamplingParams()), stream))
        generated, done = await collect(stream)
        assert done.stop_reason == StopReason.CANCELLED
        assert generated == tiny.solo(tokens, 3)  # not one step more
        assert done.generated_token_count == 3
        assert session.snapshot.history_length == 7 + 3
        await close(stack, session)
        assert_clean(stack)


async def test_a_cancelled_generate_keeps_its_streamed_tokens_in_the_history(tiny):
    tokens = prompt(10, 10)
    async with started(tiny) as stack:
        session = await open_session(stack, tokens)
        stream = generate(session, 200)
        events = stream.__aiter__()
        head = [await next_token(events) for _ in range(3)]
        stream.cancel()
        rest, done = await collect(stream)
        streamed = head + rest
        assert done.stop_reason == StopReason.CANCELLED
        assert done.generated_token_count == len(streamed) < 200
        assert streamed == tiny.solo(tokens, len(streamed))
        extra = prompt(1, 11)
        assert await append(session, extra) == 10 + len(streamed) + 1
        more, _ = await collect(generate(session, 6))
        assert more == tiny.solo(tokens + streamed + extra, 6)
        snap = session.snapshot
        assert (snap.inv1_violations, snap.inv2_violations) == (0, 0)
        await close(stack, session)
        assert_clean(stack)


async def test_a_generate_cancelled_before_it_runs_is_done_without_work(tiny):
    async with started(tiny) as stack:
        session = await open_session(stack, prompt(5, 12))
        stream = TokenStream()
        stream.cancel()
        session.send(Generate(GenerateParams(8, SamplingParams()), stream))
        generated, done = await collect(stream)
        assert (generated, done.stop_reason, done.generated_token_count) == ([], StopReason.CANCELLED, 0)
        assert session.snapshot.history_length == 5
        assert stack.pool.used_bytes == 0  # no KV was reserved for it
        await close(stack, session)
        assert_clean(stack)


async def test_a_full_session_mailbox_answers_overloaded_and_queued_appends_keep_order(tiny):
    tokens = prompt(6, 13)
    limits = SessionLimits(mailbox_size=2)
    async with started(tiny, limits=limits) as stack:
        session = await open_session(stack, tokens)
        stream = generate(session, 200)
        events = stream.__aiter__()
        await next_token(events)  # the session is now inside the Generate; its mailbox is empty
        first, second = send_append(session, [3]), send_append(session, [4])
        with pytest.raises(Overloaded, match="mailbox is full"):
            send_append(session, [5])
        stream.cancel()
        rest, done = await collect(stream)
        n = 1 + len(rest)
        assert await asyncio.wait_for(asyncio.gather(first, second), TIMEOUT_S) == [6 + n + 1, 6 + n + 2]
        await close(stack, session)
        assert_clean(stack)


async def test_bad_requests_fail_alone_and_change_nothing(tiny):
    limits = SessionLimits(max_append_tokens=16, max_generate_tokens=32, max_history_tokens=40)
    async with started(tiny, limits=limits) as stack:
        session = await open_session(stack)
        with pytest.raises(FailedPrecondition, match="history is empty"):
            await collect(generate(session, 4))
        with pytest.raises(InvalidRequest, match="outside the vocabulary"):
            await append(session, [5, 128])
        with pytest.raises(InvalidRequest, match="exceeds the limit"):
            await append(session, prompt(17, 14))
        tokens = prompt(12, 15)
        assert await append(session, tokens) == 12  # nothing of the failed appends stuck
        with pytest.raises(InvalidRequest, match="max_tokens 33 exceeds"):
            await collect(generate(session, 33))
        with pytest.raises(InvalidRequest, match="would exceed the limit of 40"):
            await collect(generate(session, 29))
        with pytest.raises(InvalidRequest, match="max_tokens must be > 0"):
            await collect(generate(session, 0))
        assert stack.pool.used_bytes == 0
        generated, _ = await collect(generate(session, 28))  # exactly at the history limit
        assert generated == tiny.solo(tokens, 28)
        assert session.snapshot.history_length == 40
        await close(stack, session)
        assert_clean(stack)


async def test_a_closed_session_refuses_every_message(tiny):
    async with started(tiny) as stack:
        session = await open_session(stack, prompt(4, 16))
        assert await close(stack, session) == 4
        assert not session.is_alive
        with pytest.raises(SessionNotFound):
            send_append(session, [7])
        with pytest.raises(SessionNotFound):
            generate(session, 2)
        with pytest.raises(SessionNotFound):
            stack.registry.get(session.session_id)
        assert_clean(stack)
