"""TokenStream: events in order, ready tokens taken together up to a limit, errors raised once."""

from __future__ import annotations

import asyncio

import pytest

from kakeya import Client
from kakeya.session import Session
from kakeya.transport import Transport
from kakeya.actors.token_stream import Done, StopReason, TokenStream, Truncated
from kakeya.runtime.common.errors import Unavailable

TIMEOUT_S = 5
DONE = Done(StopReason.MAX_TOKENS, 5, 3, 0.1, 0.2)


async def _all(iterator) -> list:
    return await asyncio.wait_for(_collect(iterator), TIMEOUT_S)


async def _collect(iterator) -> list:
    return [item async for item in iterator]


async def test_ready_tokens_come_together_up_to_the_limit_and_never_across_other_events():
    stream = TokenStream()
    stream.push(Truncated(7))
    for token in (1, 2, 3, 4, 5):
        stream.push(token)
    stream.push(DONE)
    stream.push(9)  # after Done: dropped
    assert await _all(stream.batches(2)) == [Truncated(7), [1, 2], [3, 4], [5], DONE]


async def test_one_at_a_time_reads_single_events():
    stream = TokenStream()
    for event in (1, 2, DONE):
        stream.push(event)
    assert await _all(stream) == [1, 2, DONE]


async def test_a_waiting_reader_wakes_on_the_next_push_and_takes_what_is_there():
    stream = TokenStream()
    batches = stream.batches(8)
    first = asyncio.ensure_future(batches.__anext__())
    seen_waiting = []

    def produce() -> None:  # scheduled after the reader's first step, so it finds the reader waiting
        seen_waiting.append(not first.done())
        stream.push(1)
        stream.push(2)

    asyncio.get_running_loop().call_soon(produce)
    assert await asyncio.wait_for(first, TIMEOUT_S) == [1, 2]
    assert seen_waiting == [True]
    stream.push(DONE)
    assert await asyncio.wait_for(batches.__anext__(), TIMEOUT_S) == DONE


async def test_a_failure_is_raised_after_the_tokens_before_it():
    stream = TokenStream()
    stream.push(1)
    stream.fail(RuntimeError("engine gone"))
    stream.push(2)  # after the failure: dropped
    batches = stream.batches(4)
    assert await asyncio.wait_for(batches.__anext__(), TIMEOUT_S) == [1]
    with pytest.raises(RuntimeError, match="engine gone"):
        await asyncio.wait_for(batches.__anext__(), TIMEOUT_S)


async def test_unread_events_make_a_stalled_stream():
    stream = TokenStream()
    assert not stream.is_stalled(0.0)
    stream.push(1)
    assert stream.is_stalled(0.0) and not stream.is_stalled(3600.0)
    await _all(_take_one(stream))
    assert not stream.is_stalled(0.0)


async def _take_one(stream: TokenStream):
    async for item in stream.batches(4):
        yield item
        return


async def test_a_minimum_holds_tokens_after_the_first_until_enough_or_another_event():
    stream = TokenStream()
    batches = stream.batches(8, 3)
    for token in (1, 2):
        stream.push(token)
    assert await asyncio.wait_for(batches.__anext__(), TIMEOUT_S) == [1, 2]  # the first goes at once
    wake = asyncio.ensure_future(batches.__anext__())
    pushed = []

    def produce() -> None:  # runs while the reader waits: two tokens are not enough to wake it
        for token in (3, 4):
            stream.push(token)
            pushed.append(wake.done())
        asyncio.get_running_loop().call_soon(lambda: (pushed.append(wake.done()), stream.push(5)))

    asyncio.get_running_loop().call_soon(produce)
    assert await asyncio.wait_for(wake, TIMEOUT_S) == [3, 4, 5]
    assert pushed == [False, False, False]
    stream.push(6)
    stream.push(DONE)  # the run of tokens ends: the one held goes with it
    assert await _all(batches) == [[6], DONE]


async def test_events_before_the_first_token_do_not_use_up_its_exemption():
    stream = TokenStream()
    stream.push(Truncated(2))
    stream.push(1)
    assert await _all(_first(stream.batches(8, 4), 2)) == [Truncated(2), [1]]


async def test_a_reader_waiting_for_a_fuller_message_is_not_stalled():
    stream = TokenStream()
    batches = stream.batches(8, 4)
    stream.push(1)
    assert await asyncio.wait_for(batches.__anext__(), TIMEOUT_S) == [1]
    waiting = asyncio.ensure_future(batches.__anext__())
    asyncio.get_running_loop().call_soon(stream.push, 2)
    await asyncio.wait_for(asyncio.sleep(0), TIMEOUT_S)  # one loop turn: the reader now waits, 2 is pushed
    await asyncio.wait_for(asyncio.sleep(0), TIMEOUT_S)
    assert not waiting.done() and not stream.is_stalled(0.0)
    stream.push(DONE)
    assert await asyncio.wait_for(waiting, TIMEOUT_S) == [2]


async def _first(iterator, count: int):
    async for item in iterator:
        yield item
        count -= 1
        if not count:
            return


@pytest.mark.parametrize("value", [0, -1, 2**32, 1.5, True, "4"])
def test_the_client_refuses_a_bad_tokens_per_message(value):
    with pytest.raises(ValueError, match="max_tokens_per_message"):
        Client("127.0.0.1:1", max_tokens_per_message=value)


@pytest.mark.parametrize("value", [0, 65, 1.5, True])
def test_a_generation_refuses_a_bad_minimum_before_any_call(value):
    # Above the client's max_tokens_per_message (64) too: the runtime would refuse it.
    session = Session(Transport("127.0.0.1:1", None, None, max_tokens_per_message=64), "0" * 32)
    with pytest.raises(ValueError, match="min_tokens_per_message"):
        session.generate(4, min_tokens_per_message=value)


async def test_a_cancel_with_a_cause_ends_the_stream_with_it_instead_of_a_cancelled_done():
    cancelled = Done(StopReason.CANCELLED, 2, 3, 0.1, 0.2)
    plain = TokenStream()
    plain.push(1)
    plain.cancel()
    plain.push(cancelled)
    assert await _all(plain.batches(4)) == [[1], cancelled]

    shut = TokenStream()
    shut.push(1)
    shut.cancel(Unavailable("the server is shutting down"))
    shut.cancel()  # the reader's own cancel afterwards keeps the first cause
    shut.push(2)
    shut.push(cancelled)
    iterator = shut.batches(4)
    assert await asyncio.wait_for(anext(iterator), TIMEOUT_S) == [1, 2]  # tokens already sampled still go
    with pytest.raises(Unavailable, match="shutting down"):
        await asyncio.wait_for(anext(iterator), TIMEOUT_S)
    # A stream that ends on its own (max tokens) is not turned into an error by a late cause.
    finished = TokenStream()
    finished.cancel(Unavailable("the server is shutting down"))
    finished.push(DONE)
    assert await _all(finished.batches(4)) == [DONE]
