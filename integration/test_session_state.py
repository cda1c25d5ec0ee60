"""What a session reports and holds, over real gRPC on the embedded model: it stops at the model's
EOS by default, gives back the KV its Generate did not use, and reports a running Generate's
progress."""

from __future__ import annotations

import asyncio

from kakeya.proto.v1 import runtime_pb2 as pb

from .harness import TIMEOUT_S, append, close, create, generate, info

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2]  # greedy: <|im_end|> (2) is its 4th token
IM_END = 2


def blocks_bytes(server, tokens: int) -> int:
    pool = server.runtime.pool
    return -(-tokens // pool.block_tokens) * pool.block_tokens * pool.shape.bytes_per_token


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
    assert len((await generate(stub, session_id, 2)).tokens) == 2  # the trimmed slab goes on
    await close(stub, session_id)

