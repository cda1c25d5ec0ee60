"""A session's KV after and during a Generate, on a real tiny model: a reservation its request left
unused is given back when the request ends, and the snapshot reports the running job's progress."""

from __future__ import annotations

import asyncio
import threading

import pytest

from actor_fixtures import (BYTES_PER_TOKEN, TIMEOUT_S, CancelAfter, assert_clean, collect, generate, load,
                            next_token, open_session, prompt, started)
from kakeya.actors.messages import Generate, GenerateParams
from kakeya.actors.token_stream import StopReason
from kakeya.runtime.engine.sampler import SamplingParams
from kakeya.runtime.forward.session_kv import SessionKV

BLOCK = 16  # the fixture's kv_block_tokens


@pytest.fixture(scope="module")
def tiny():
    return load()


def blocks(tokens: int) -> int:
    return -(-tokens // BLOCK) * BLOCK


async def test_a_cancelled_generate_gives_back_what_it_did_not_use(tiny):
    tokens = prompt(20, 30)
    async with started(tiny) as stack:
        session = await open_session(stack, tokens)
        stream = CancelAfter(3)
        session.send(Generate(GenerateParams(200, SamplingParams()), stream))
        generated, done = await collect(stream)
        assert done.stop_reason == StopReason.CANCELLED and len(generated) == 3
        snap = session.snapshot
        assert snap.history_length == 23
        # Reserved for 20 + 200 while it ran; now 23 and a quarter, in blocks: the history's blocks.
        assert snap.kv_live_bytes == stack.pool.used_bytes == blocks(23) * BYTES_PER_TOKEN
        assert snap.kv_used_bytes == snap.kv_resident_tokens * BYTES_PER_TOKEN == 22 * BYTES_PER_TOKEN
        assert snap.kv_reserved_bytes == snap.kv_live_bytes - snap.kv_used_bytes
        assert stack.runtime.counter("kakeya_kv_used_bytes") == snap.kv_used_bytes
        assert stack.runtime.counter("kakeya_kv_reserved_bytes") == snap.kv_reserved_bytes
        # The trimmed slab kept every position: the next Generate continues the same greedy stream.
        more, _ = await collect(generate(session, 6))
        assert generated + more == tiny.solo(tokens, 9)
        await asyncio.wait_for(stack.registry.close(session.session_id), TIMEOUT_S)
        assert_clean(stack)


async def test_a_generate_that_uses_its_reservation_keeps_it(tiny):
    tokens = prompt(20, 31)
    async with started(tiny) as stack:
        session = await open_session(stack, tokens)
        generated, done = await collect(generate(session, 40))
        assert done.stop_reason == StopReason.MAX_TOKENS
        assert session.snapshot.kv_live_bytes == blocks(60) * BYTES_PER_TOKEN
        await asyncio.wait_for(stack.registry.close(session.session_id), TIMEOUT_S)
        assert_clean(stack)


@pytest.mark.parametrize("speculative", ["none", "ngram"])
async def test_the_snapshot_reports_a_running_generates_progress(tiny, speculative):
    tokens = prompt(13, 32)
    async with started(tiny, speculative=speculative) as stack:
        session = await open_session(stack, tokens)
        assert session.snapshot.kv_live_bytes == 0
        stream = generate(session, 40)
        events = stream.__aiter__()
        for _ in range(5):
            await next_token(events)
        snap = session.snapshot  # the tokens read, and any the scheduler sampled since
        assert 13 + 5 <= snap.history_length < 13 + 40
        assert snap.pending_tokens == 1  # the last sampled token
        assert snap.kv_resident_tokens == snap.history_length - 1
        assert snap.kv_used_bytes == snap.kv_resident_tokens * BYTES_PER_TOKEN
        assert snap.kv_live_bytes == blocks(13 + 40) * BYTES_PER_TOKEN  # the running reservation
        assert snap.kv_reserved_bytes == snap.kv_live_bytes - snap.kv_used_bytes
        rest, _ = await collect(stream)
        assert session.snapshot.history_length == 13 + 40 and len(rest) == 35
        await asyncio.wait_for(stack.registry.close(session.session_id), TIMEOUT_S)
        assert_clean(stack)



async def test_slab_copies_run_on_the_model_thread(tiny, monkeypatch):
    # On a CPU a slab copy is an OpenMP loop: run from the event loop's thread it would leave a
    # second OpenMP thread team that slows every later step (kv_pool.KVPool).
    copies: list[str] = []
    resize = SessionKV.resize

    def recorded(kv, capacity):
        if kv.num_resident:
            copies.append(threading.current_thread().name)
        return resize(kv, capacity)

    monkeypatch.setattr(SessionKV, "resize", recorded)
    async with started(tiny) as stack:
        session = await open_session(stack, prompt(20, 30))
        for _ in range(2):  # a trimmed reservation, then a slab grown again with its history in it
            stream = CancelAfter(3)
            session.send(Generate(GenerateParams(200, SamplingParams()), stream))
            await collect(stream)
    assert len(copies) >= 2
    assert all(name.startswith("kakeya-model") for name in copies), copies
