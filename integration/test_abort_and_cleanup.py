"""Whatever way a Generate stream ends, what it took is given back, and 64 streams survive 10 aborts.

For each ending (completed, cancelled by the client, deadline exceeded, refused as unauthenticated,
cut off as a stalled consumer): no job stays in the scheduler, the session settles with a
consistent history and stays usable, and after closing, the registry and the KV pool are back to
exactly what they held before the test.
"""

from __future__ import annotations

import asyncio

import grpc

from kakeya.actors.messages import Generate, GenerateParams
from kakeya.actors.token_stream import Done, StopReason, TokenStream
from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.runtime.engine.sampler import SamplingParams

from .harness import TIMEOUT_S, append, close, create, eventually, generate, info, start_server, status_of

PROMPT = list(range(900, 930))
LONG = 2000  # max_tokens of a Generate that cannot finish before the test ends it


def _usage(runtime) -> tuple[int, int]:
    """What a test must give back: open sessions and KV bytes."""
    return runtime.registry.num_active, runtime.pool.used_bytes


async def _settle(runtime, session_id: str) -> None:
    """The scheduler dropped every job and the session's actor finished its messages."""
    await eventually(lambda: runtime.scheduler.num_running == 0, TIMEOUT_S, "the scheduler to drop the job")
    await eventually(lambda: runtime.registry.get(session_id).is_idle, TIMEOUT_S, "the session to settle")


async def _check_usable_then_close(stub, runtime, session_id: str, before: tuple[int, int], **auth) -> None:
    """The settled session is consistent, a further Generate continues it, and closing frees everything."""
    await _settle(runtime, session_id)
    state = await stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=session_id), timeout=TIMEOUT_S, **auth)
    assert state.kv_resident_tokens + state.pending_tokens == state.history_length
    assert state.cache_invariant_inv1_violations == state.cache_invariant_inv2_violations == 0
    tokens = []
    call = stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=2), timeout=TIMEOUT_S, **auth)
    async for response in call:
        if response.WhichOneof("payload") == "token_id":
            tokens.append(response.token_id)
    assert len(tokens) == 2
    closed = await stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=TIMEOUT_S, **auth)
    assert closed.final_history_length == state.history_length + 2
    await eventually(lambda: runtime.scheduler.num_running == 0, TIMEOUT_S, "the scheduler to be idle")
    assert _usage(runtime) == before, "sessions or KV bytes were not released"


async def _open(stub, prompt=PROMPT) -> str:
    session_id = await create(stub)
    await append(stub, session_id, prompt)
    return session_id


async def _history(stub, session_id: str) -> int:
    return (await info(stub, session_id)).history_length


# --- each way a stream can end --------------------------------------------------------------


async def test_completed_stream_releases_everything(stub, server):
    runtime = server.runtime
    before = _usage(runtime)
    session_id = await _open(stub)
    result = await generate(stub, session_id, 4)
    assert len(result.tokens) == 4 and result.done.stop_reason == pb.GenerateDone.STOP_REASON_MAX_TOKENS
    assert await _history(stub, session_id) == len(PROMPT) + 4
    await _check_usable_then_close(stub, runtime, session_id, before)


async def test_client_cancel_mid_stream_releases_everything(stub, server):
    runtime = server.runtime
    before = _usage(runtime)
    session_id = await _open(stub)
    call = stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=LONG), timeout=TIMEOUT_S)
    streamed = [(await asyncio.wait_for(call.read(), TIMEOUT_S)).token_id for _ in range(3)]
    assert call.cancel()
    assert await asyncio.wait_for(call.code(), TIMEOUT_S) == grpc.StatusCode.CANCELLED
    await _settle(runtime, session_id)
    kept = await _history(stub, session_id) - len(PROMPT)
    # Streamed tokens stay; at most the steps already in flight when the cancel landed add more.
    assert len(streamed) <= kept <= len(streamed) + 2
    await _check_usable_then_close(stub, runtime, session_id, before)


async def test_deadline_exceeded_releases_everything(stub, server):
    runtime = server.runtime
    before = _usage(runtime)
    session_id = await _open(stub)
    call = stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=LONG), timeout=0.5)
    streamed = 0
    try:
        async for response in call:
            streamed += response.WhichOneof("payload") == "token_id"
        raise AssertionError("a 2,000-token Generate finished inside a 0.5 s deadline")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _settle(runtime, session_id)
    kept = await _history(stub, session_id) - len(PROMPT)
    # The job stopped: what the client saw is kept, plus at most what was in flight at the deadline.
    assert streamed <= kept <= streamed + 3 and kept < LONG
    await _check_usable_then_close(stub, runtime, session_id, before)


async def test_unauthenticated_calls_take_nothing(loaded_model):
    handle = await start_server(loaded_model, server={"api_keys": ("soak-key",)})
    stub, runtime = handle.stub, handle.runtime
    key = {"metadata": (("authorization", "Bearer soak-key"),)}
    try:
        before = _usage(runtime)
        create = pb.CreateSessionRequest(no_default_eos=True)  # the check after runs a Generate to max_tokens
        session_id = (await stub.CreateSession(create, timeout=TIMEOUT_S, **key)).session_id
        await stub.AppendTokens(pb.AppendTokensRequest(session_id=session_id, token_ids=PROMPT),
                                timeout=TIMEOUT_S, **key)
        held = _usage(runtime)
        for bad in ({}, {"metadata": (("authorization", "Bearer wrong-key"),)},
                    {"metadata": (("authorization", "Basic soak-key"),)}):
            stream = stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=LONG), timeout=TIMEOUT_S,
                                   **bad)
            assert await status_of(stream.read()) == grpc.StatusCode.UNAUTHENTICATED
            for call in (stub.CreateSession(pb.CreateSessionRequest(), timeout=TIMEOUT_S, **bad),
                         stub.AppendTokens(pb.AppendTokensRequest(session_id=session_id, token_ids=[1]),
                                           timeout=TIMEOUT_S, **bad),
                         stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=session_id), timeout=TIMEOUT_S,
                                             **bad),
                         stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=TIMEOUT_S,
                                           **bad)):
                assert await status_of(call) == grpc.StatusCode.UNAUTHENTICATED
        assert runtime.scheduler.num_running == 0 and _usage(runtime) == held
        state = await stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=session_id), timeout=TIMEOUT_S, **key)
        assert state.history_length == len(PROMPT)  # nothing the refused calls asked for happened
        await _check_usable_then_close(stub, runtime, session_id, before, **key)
        assert _usage(runtime) == (0, 0)
    finally:
        await handle.stop()


async def test_stalled_consumer_releases_everything(loaded_model):
    handle = await start_server(loaded_model, engine={"consumer_stall_timeout_s": 0.3})
    stub, runtime = handle.stub, handle.runtime
    try:
        before = _usage(runtime)
        session_id = await _open(stub)
        # Drive the session actor directly with a stream nobody reads (as a stuck client would).
        stream = TokenStream()
        runtime.registry.get(session_id).send(Generate(GenerateParams(LONG, SamplingParams()), stream))
        await eventually(lambda: stream.is_finished, TIMEOUT_S, "the stalled generate to be cut off")
        events = [event async for event in stream]
        done = events[-1]
        assert isinstance(done, Done) and done.stop_reason is StopReason.CANCELLED
        generated = [event for event in events if isinstance(event, int)]
        assert 0 < len(generated) == done.generated_token_count < LONG
        await _settle(runtime, session_id)
        assert await _history(stub, session_id) == len(PROMPT) + len(generated)
        await _check_usable_then_close(stub, runtime, session_id, before)
        assert _usage(runtime) == (0, 0)
    finally:
        await handle.stop()


# --- 64 concurrent streams, 10 of them aborted ----------------------------------------------

STREAMS, ABORTED, MAX_TOKENS = 64, 10, 12
PROMPTS = [[1, 200 + 7 * i, 3000 + 11 * i, 9000 + 13 * i] for i in range(STREAMS)]  # all distinct
ABORT = frozenset(range(0, STREAMS, STREAMS // ABORTED + 1))  # 10 sessions spread over the batch


async def _open_all(stub) -> list[str]:
    ids = await asyncio.gather(*(create(stub) for _ in PROMPTS))
    await asyncio.gather(*(append(stub, sid, prompt) for sid, prompt in zip(ids, PROMPTS)))
    return ids


async def _stream(stub, session_id: str, abort: bool) -> tuple[list[int], pb.GenerateDone | None, grpc.StatusCode]:
    """One Generate; when `abort`, cancelled right after its first token."""
    call = stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=MAX_TOKENS), timeout=TIMEOUT_S)
    tokens, done = [], None
    if abort:
        tokens.append((await call.read()).token_id)
        call.cancel()
    else:
        async for response in call:
            if response.WhichOneof("payload") == "token_id":
                tokens.append(response.token_id)
            else:
                done = response.done
    return tokens, done, await call.code()


async def test_64_streams_with_10_aborted_mid_stream(loaded_model):
    assert len(ABORT) == ABORTED
    handle = await start_server(loaded_model, limits={"max_sessions": 128})
    stub, runtime = handle.stub, handle.runtime
    try:
        # Expected streams: greedy decoding is deterministic and batch-invariant, so the same
        # prompts run as one batch beforehand give every session's solo tokens.
        probes = await _open_all(stub)
        expected = [g.tokens for g in await asyncio.wait_for(
            asyncio.gather(*(generate(stub, sid, MAX_TOKENS) for sid in probes)), TIMEOUT_S)]
        await asyncio.gather(*(close(stub, sid) for sid in probes))
        assert all(len(tokens) == MAX_TOKENS for tokens in expected)
        assert _usage(runtime) == (0, 0)

        ids = await _open_all(stub)
        results = await asyncio.wait_for(
            asyncio.gather(*(_stream(stub, sid, i in ABORT) for i, sid in enumerate(ids))), TIMEOUT_S)
        for i, (tokens, done, code) in enumerate(results):
            if i in ABORT:
                assert code == grpc.StatusCode.CANCELLED and tokens == expected[i][:1], i
            else:
                assert code == grpc.StatusCode.OK and tokens == expected[i], i
                assert done.stop_reason == pb.GenerateDone.STOP_REASON_MAX_TOKENS
                assert done.generated_token_count == MAX_TOKENS
        # The batch really ran together.
        assert runtime.scheduler.stats.max_sessions_per_forward >= STREAMS - ABORTED

        # Aborted sessions kept a consistent prefix of their stream and continue it exactly.
        await eventually(lambda: runtime.scheduler.num_running == 0, TIMEOUT_S, "aborted jobs to be dropped")
        await eventually(lambda: all(runtime.registry.get(s).is_idle for s in ids), TIMEOUT_S, "sessions to settle")
        aborted = sorted(ABORT)
        kept = [await _history(stub, ids[i]) - len(PROMPTS[i]) for i in aborted]
        assert all(1 <= k <= 3 for k in kept), kept
        more = await asyncio.wait_for(asyncio.gather(
            *(generate(stub, ids[i], MAX_TOKENS - k) for i, k in zip(aborted, kept))), TIMEOUT_S)
        for i, k, continuation in zip(aborted, kept, more):
            assert expected[i][:k] + continuation.tokens == expected[i], i
        for i, sid in enumerate(ids):
            state = await info(stub, sid)
            assert state.history_length == len(PROMPTS[i]) + MAX_TOKENS
            assert state.kv_resident_tokens + state.pending_tokens == state.history_length

        finals = await asyncio.gather(*(close(stub, sid) for sid in ids))
        assert finals == [len(p) + MAX_TOKENS for p in PROMPTS]
        await eventually(lambda: runtime.scheduler.num_running == 0, TIMEOUT_S, "the scheduler to be idle")
        assert _usage(runtime) == (0, 0) and runtime.pool.num_slabs == 0
        assert runtime.counter("kakeya_session_evicted_total", reason="lru") == 0
    finally:
        await handle.stop()
