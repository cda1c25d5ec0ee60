"""What a session reports and holds, over real gRPC on the embedded model: it stops at the model's
EOS by default, gives back the KV its Generate did not use, reports a running Generate's progress,
and ListSessions (RPC, SDK and `kakeya sessions`) lists it."""

from __future__ import annotations

import asyncio

from kakeya import Client, SessionSummary, StopReason
from kakeya.proto.v1 import runtime_pb2 as pb

from .harness import TIMEOUT_S, append, close, create, generate, info
from .test_sdk_chat import run_python

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2]  # greedy: <|im_end|> (2) is its 4th token
IM_END = 2


def blocks_bytes(server, tokens: int) -> int:
    pool = server.runtime.pool
    return -(-tokens // pool.block_tokens) * pool.block_tokens * pool.shape.bytes_per_token


async def list_sessions(stub, **options) -> list[pb.SessionSummary]:
    return list((await stub.ListSessions(pb.ListSessionsRequest(), timeout=TIMEOUT_S, **options)).sessions)


async def next_token(call) -> int:
    response = await asyncio.wait_for(call.read(), TIMEOUT_S)
    assert response.WhichOneof("payload") == "token_id", response
    return response.token_id


async def test_a_session_stops_at_the_models_eos_unless_it_opts_out(stub):
    runtime_eos = list((await stub.GetRuntimeInfo(pb.GetRuntimeInfoRequest(), timeout=TIMEOUT_S)).default_eos_token_ids)
    assert runtime_eos == [IM_END]
    by_default, opted_out = await create(stub, default_eos=True), await create(stub)
    named = await create(stub, eos=(198,))  # named ids replace the model's, opted out or not
    assert [list((await info(stub, s)).eos_token_ids) for s in (by_default, opted_out, named)] == [[IM_END], [], [198]]
    for session_id in (by_default, opted_out):
        await append(stub, session_id, PROMPT)
    stopped, ran_on = await generate(stub, by_default, 8), await generate(stub, opted_out, 8)
    assert ran_on.done.stop_reason == pb.GenerateDone.STOP_REASON_MAX_TOKENS and len(ran_on.tokens) == 8
    assert ran_on.tokens.index(IM_END) == 3
    assert stopped.tokens == ran_on.tokens[:4] and stopped.done.generated_token_count == 4
    assert stopped.done.stop_reason == pb.GenerateDone.STOP_REASON_EOS
    for session_id in (by_default, opted_out, named):
        await close(stub, session_id)


async def test_a_running_generate_reports_its_progress_and_gives_back_what_it_did_not_use(stub, server):
    bytes_per_token = server.runtime.pool.shape.bytes_per_token
    session_id = await create(stub, label="trim")
    await append(stub, session_id, list(range(300, 340)))
    call = stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=2048))
    streamed = [await next_token(call) for _ in range(3)]
    mid = await info(stub, session_id)  # the tokens streamed, and any sampled since
    assert 40 + len(streamed) <= mid.history_length < 40 + 2048
    assert (mid.pending_tokens, mid.kv_resident_tokens) == (1, mid.history_length - 1)
    assert mid.kv_used_bytes == mid.kv_resident_tokens * bytes_per_token
    assert mid.kv_live_bytes == blocks_bytes(server, 40 + 2048)  # the running reservation
    assert mid.kv_reserved_bytes == mid.kv_live_bytes - mid.kv_used_bytes
    [listed] = await list_sessions(stub)
    assert (listed.session_id, listed.client_label, listed.busy, listed.idle_seconds) == (session_id, "trim", True, 0)
    assert listed.history_length >= mid.history_length and listed.kv_live_bytes == mid.kv_live_bytes
    call.cancel()
    # Queued behind the Generate, an append answers once the cancelled request has ended.
    history = await append(stub, session_id, [])
    after = await info(stub, session_id)
    assert mid.history_length <= after.history_length == history < 40 + 2048
    # The reservation for 2048 is given back: the history and a quarter remain, in blocks (one
    # block here, the history's size rounded up).
    assert after.kv_live_bytes == blocks_bytes(server, history + history // 4) == server.runtime.pool.used_bytes
    assert after.kv_live_bytes < mid.kv_live_bytes
    assert after.kv_used_bytes == (history - 1) * bytes_per_token
    assert after.kv_reserved_bytes == after.kv_live_bytes - after.kv_used_bytes
    assert server.runtime.counter("kakeya_kv_used_bytes") == after.kv_used_bytes
    assert server.runtime.counter("kakeya_kv_reserved_bytes") == after.kv_reserved_bytes
    [listed] = await list_sessions(stub)
    assert (listed.history_length, listed.kv_live_bytes, listed.busy) == (history, after.kv_live_bytes, False)
    assert len((await generate(stub, session_id, 2)).tokens) == 2  # the trimmed slab goes on
    await close(stub, session_id)
    assert await list_sessions(stub) == []


async def test_sdk_lists_sessions_and_stops_at_the_models_eos(server):
    async with Client(server.server.address) as client:
        async with client.session(initial_tokens=PROMPT, label="sdk") as session, \
                client.session(initial_tokens=PROMPT, default_eos=False) as raw:
            stream = session.generate(max_tokens=8)
            assert len(await asyncio.wait_for(stream.collect(), TIMEOUT_S)) == 4
            assert stream.stop_reason is StopReason.EOS
            assert len(await asyncio.wait_for(raw.generate(max_tokens=8).collect(), TIMEOUT_S)) == 8
            entries = await asyncio.wait_for(client.list_sessions(), TIMEOUT_S)
            assert all(isinstance(entry, SessionSummary) for entry in entries)
            assert [(e.session_id, e.client_label, e.history_length, e.busy) for e in entries] == [
                (session.session_id, "sdk", len(PROMPT) + 4, False), (raw.session_id, "", len(PROMPT) + 8, False)]
            assert entries[0].kv_live_bytes == (await session.info()).kv_live_bytes > 0
            assert entries[0].idle_seconds >= 0
        assert await asyncio.wait_for(client.list_sessions(), TIMEOUT_S) == []


async def test_kakeya_sessions_prints_one_line_per_session(server, stub):
    ids = [await create(stub, label=label) for label in ("first", "second\nline")]
    await append(stub, ids[0], PROMPT)
    code, out, err = await run_python("-m", "kakeya.runtime.server.cli", "sessions", "--address", server.server.address)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ids
    assert f"history={len(PROMPT)}" in lines[0] and "label='first'" in lines[0] and " idle " in lines[0]
    assert "label='second\\nline'" in lines[1] and "kv_bytes=0" in lines[1]
    for session_id in ids:
        await close(stub, session_id)


async def test_kakeya_sessions_without_a_runtime():
    code, out, err = await run_python("-m", "kakeya.runtime.server.cli", "sessions", "--address", "127.0.0.1:1")
    assert code == 1 and out == ""
    assert "not reachable" in err and "127.0.0.1:1" in err and "Traceback" not in err

