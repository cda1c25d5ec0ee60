"""Cancellation, eviction (TTL and LRU), capacity and cache invariants, on real runtimes."""

from __future__ import annotations

import asyncio

import grpc

from kakeya.proto.v1 import runtime_pb2 as pb

from .harness import TIMEOUT_S, append, close, create, eventually, generate, info, start_server, status_of

PROMPT = list(range(300, 340))


async def _first_tokens(stub, session_id: str, count: int, max_tokens: int):
    """Starts a Generate and returns the call once `count` tokens have arrived."""
    call = stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=max_tokens))
    tokens = []
    while len(tokens) < count:
        response = await asyncio.wait_for(call.read(), TIMEOUT_S)
        tokens.append(response.token_id)
    return call, tokens


async def test_cancel_mid_stream_keeps_streamed_tokens_and_frees_work(stub, server):
    runtime = server.runtime
    solo = await create(stub)
    await append(stub, solo, PROMPT)
    expected = (await generate(stub, solo, 40)).tokens
    await close(stub, solo)

    session_id = await create(stub)
    await append(stub, session_id, PROMPT)
    call, streamed = await _first_tokens(stub, session_id, 5, max_tokens=1000)
    kv_before_cancel = runtime.pool.used_bytes
    call.cancel()
    await eventually(lambda: runtime.scheduler.num_running == 0, TIMEOUT_S, "the job to be dropped")
    await eventually(lambda: runtime.registry.get(session_id).is_idle, TIMEOUT_S, "the session to settle")
    state = await info(stub, session_id)
    kept = state.history_length - len(PROMPT)
    # Tokens already streamed stay; at most the one step in flight was added after them.
    assert streamed == expected[:5] and 5 <= kept <= 7
    assert state.kv_resident_tokens + state.pending_tokens == state.history_length
    # The room reserved for the 1000 tokens asked for is given back once the request ends.
    assert runtime.pool.used_bytes == state.kv_live_bytes < kv_before_cancel
    # The session is reusable and continues exactly where the history stands.
    more = await generate(stub, session_id, 40 - kept)
    assert expected[:kept] + more.tokens == expected
    await close(stub, session_id)
    assert runtime.pool.used_bytes == 0


async def test_close_during_generate_cancels_it(stub, server):
    session_id = await create(stub)
    await append(stub, session_id, PROMPT)
    call, _ = await _first_tokens(stub, session_id, 2, max_tokens=1000)
    await asyncio.wait_for(close(stub, session_id), TIMEOUT_S)
    last = response = None
    while response is not grpc.aio.EOF:
        last, response = response, await asyncio.wait_for(call.read(), TIMEOUT_S)
    assert last.done.stop_reason == pb.GenerateDone.STOP_REASON_CANCELLED
    assert server.runtime.pool.used_bytes == 0


async def test_ttl_eviction_really_runs(loaded_model):
    handle = await start_server(loaded_model, limits={"session_ttl_s": 0.3})
    try:
        session_id = await create(handle.stub)
        await append(handle.stub, session_id, PROMPT)
        await eventually(lambda: handle.runtime.registry.num_active == 0, 10.0, "TTL eviction")
        assert await status_of(info(handle.stub, session_id)) == grpc.StatusCode.NOT_FOUND
        assert handle.runtime.counter("kakeya_session_evicted_total", reason="ttl") == 1
    finally:
        await handle.stop()


async def test_lru_eviction_and_capacity(loaded_model):
    handle = await start_server(loaded_model, limits={"max_sessions": 2})
    stub = handle.stub
    try:
        oldest, newer = await create(stub), await create(stub)
        await append(stub, newer, PROMPT)  # touched last: `oldest` is least recently used
        third = await create(stub)
        assert await status_of(info(stub, oldest)) == grpc.StatusCode.NOT_FOUND
        assert handle.runtime.counter("kakeya_session_evicted_total", reason="lru") == 1
        # With every session busy generating, nothing is idle: RESOURCE_EXHAUSTED.
        await append(stub, third, PROMPT)
        calls = [(await _first_tokens(stub, sid, 1, max_tokens=1000))[0] for sid in (newer, third)]
        assert await status_of(create(stub)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in calls:
            call.cancel()
        await eventually(lambda: handle.runtime.scheduler.num_running == 0, TIMEOUT_S, "jobs to drop")
        await eventually(lambda: all(handle.runtime.registry.get(s).is_idle for s in (newer, third)),
                         TIMEOUT_S, "sessions to settle")
        assert len(await create(stub)) == 32  # an idle one can be evicted again
    finally:
        await handle.stop()


async def test_kv_budget_evicts_idle_sessions(loaded_model):
    per_block = loaded_model.num_layers * 2 * loaded_model.num_kv_heads * loaded_model.head_dim * 4 * 256
    handle = await start_server(loaded_model, engine={"kv_budget_bytes": 2 * per_block})
    stub = handle.stub
    try:
        first, second = await create(stub), await create(stub)
        for sid in (first, second):
            await append(stub, sid, PROMPT)
            await generate(stub, sid, 2)
        assert handle.runtime.pool.used_bytes == 2 * per_block
        third = await create(stub)
        await append(stub, third, PROMPT)
        assert len((await generate(stub, third, 2)).tokens) == 2
        assert await status_of(info(stub, first)) == grpc.StatusCode.NOT_FOUND  # least recently used
        # A request larger than the whole budget cannot be served even by evicting.
        await append(stub, third, [5] * 600)
        assert await status_of(generate(stub, third, 2)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await info(stub, third)).history_length == len(PROMPT) + 2 + 600
    finally:
        await handle.stop()


async def test_invariant_violation_closes_session_and_counts(stub, server):
    session_id = await create(stub)
    await append(stub, session_id, PROMPT)
    await generate(stub, session_id, 2)
    # Fault injection: corrupt the slab's position count behind the session's back.
    server.runtime.pool.sessions()[0].num_positions += 3
    assert await status_of(generate(stub, session_id, 2)) == grpc.StatusCode.FAILED_PRECONDITION
    await eventually(lambda: server.runtime.registry.num_active == 0, TIMEOUT_S, "the session to close")
    assert await status_of(info(stub, session_id)) == grpc.StatusCode.NOT_FOUND
    reply = await stub.GetRuntimeInfo(pb.GetRuntimeInfoRequest(), timeout=TIMEOUT_S)
    assert reply.cache_invariant_inv1_violations == 1
    assert server.runtime.counter("kakeya_cache_invariant_violations_total", kind="inv1") == 1
    assert server.runtime.counter("kakeya_session_total", outcome="failed") == 1
