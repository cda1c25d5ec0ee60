"""ForkSession: a copy of a session's history and KV that continues exactly as the original would."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from kakeya.proto.v1 import runtime_pb2 as pb

from .harness import TIMEOUT_S, append, close, create, generate, info, start_server, status_of

HISTORY = [42, 17, 99, 3000, 12, 12, 8, 1500, 640, 77, 5, 901] * 5


async def fork(stub, session_id: str, **fields) -> str:
    reply = await stub.ForkSession(pb.ForkSessionRequest(session_id=session_id, **fields), timeout=TIMEOUT_S)
    return reply.session_id


async def _fresh(stub, history: list[int], max_tokens: int) -> list[int]:
    """The greedy continuation of a history prefilled from scratch in a new session."""
    session_id = await create(stub)
    try:
        await append(stub, session_id, history)
        return (await generate(stub, session_id, max_tokens)).tokens
    finally:
        await close(stub, session_id)


async def test_fork_continues_bitwise_and_diverges_cleanly(server, stub):
    assert server.runtime.deterministic  # the CPU default: token streams are bitwise comparable
    original = await create(stub, label="writer")
    await append(stub, original, HISTORY)
    first = (await generate(stub, original, 8)).tokens
    copy = await fork(stub, original)
    try:
        assert (await info(stub, copy)).history_length == len(HISTORY) + 8
        assert (await info(stub, copy)).client_label == "writer"
        assert (await info(stub, copy)).kv_resident_tokens == (await info(stub, original)).kv_resident_tokens
        on_original = (await generate(stub, original, 16)).tokens
        on_copy = (await generate(stub, copy, 16)).tokens
        assert on_copy == on_original
        assert on_original == await _fresh(stub, HISTORY + first, 16)
        # Different appends: each goes its own way, as a fresh session with its history would.
        base = HISTORY + first + on_original
        await append(stub, original, [5, 6, 7])
        await append(stub, copy, [900, 901])
        after_original = (await generate(stub, original, 12)).tokens
        after_copy = (await generate(stub, copy, 12)).tokens
        assert after_original == await _fresh(stub, base + [5, 6, 7], 12)
        assert after_copy == await _fresh(stub, base + [900, 901], 12)
        assert after_original != after_copy
    finally:
        await close(stub, copy)
        await close(stub, original)


async def test_fork_of_pending_history_and_of_a_fork(stub):
    original = await create(stub)
    await append(stub, original, HISTORY)  # never generated: nothing fed, all pending
    copy = await fork(stub, original, client_label="reviewer")
    grandchild = await fork(stub, copy)
    try:
        assert (await info(stub, copy)).pending_tokens == len(HISTORY)
        assert (await info(stub, grandchild)).client_label == "reviewer"
        streams = [(await generate(stub, s, 10)).tokens for s in (original, copy, grandchild)]
        assert streams[0] == streams[1] == streams[2]
    finally:
        for session_id in (grandchild, copy, original):
            await close(stub, session_id)


async def test_fork_while_generating_waits_its_turn(stub):
    original = await create(stub)
    await append(stub, original, HISTORY)
    call = stub.Generate(pb.GenerateRequest(session_id=original, max_tokens=40), timeout=TIMEOUT_S)
    first = await asyncio.wait_for(call.read(), TIMEOUT_S)  # the Generate is running now
    assert first.WhichOneof("payload") == "token_id"
    copy = await fork(stub, original)  # answered only once that Generate is done
    rest = []
    while (message := await asyncio.wait_for(call.read(), TIMEOUT_S)) is not grpc.aio.EOF:
        rest.append(message)
    try:
        assert rest[-1].done.generated_token_count == 40
        assert (await info(stub, copy)).history_length == len(HISTORY) + 40
        assert (await generate(stub, copy, 8)).tokens == (await generate(stub, original, 8)).tokens
    finally:
        await close(stub, copy)
        await close(stub, original)


async def test_fork_accounting_and_refusals(server, stub):
    runtime = server.runtime
    original = await create(stub)
    await append(stub, original, HISTORY)
    await generate(stub, original, 4)
    copies = [await fork(stub, original) for _ in range(3)]
    try:
        assert runtime.registry.num_active == 4 and runtime.pool.num_slabs == 4
        held = [(await info(stub, s)).kv_live_bytes for s in [original, *copies]]
        assert runtime.pool.used_bytes == sum(held)
        assert await status_of(fork(stub, "f" * 32)) == grpc.StatusCode.NOT_FOUND
    finally:
        for session_id in copies:
            await close(stub, session_id)
    assert runtime.registry.num_active == 1 and runtime.pool.num_slabs == 1
    await close(stub, original)


def _bytes_per_token(loaded) -> int:
    return loaded.num_layers * 2 * loaded.num_kv_heads * loaded.head_dim * 4


async def test_fork_counts_against_the_session_limit(loaded_model):
    handle = await start_server(loaded_model, limits={"max_sessions": 2})
    stub, runtime = handle.stub, handle.runtime
    try:
        original = await create(stub)
        await append(stub, original, HISTORY)
        await generate(stub, original, 4)
        copy = await fork(stub, original)
        other = await create(stub)  # the least recently used idle session (original) makes room
        assert runtime.registry.num_active == 2
        await append(stub, other, HISTORY)
        third = await fork(stub, other)  # evicts copy, the idle one left; never the source
        assert {s.session_id for s in runtime.registry.owned_by("")} == {other, third}
        assert (await info(stub, third)).history_length == len(HISTORY)
        for session_id in (other, third):
            await close(stub, session_id)
        assert (original, copy) and runtime.pool.used_bytes == 0 and runtime.pool.num_slabs == 0
    finally:
        await handle.stop()


async def test_fork_that_does_not_fit_the_kv_budget_makes_nothing(loaded_model):
    handle = await start_server(loaded_model, engine={"kv_budget_bytes": 300 * _bytes_per_token(loaded_model),
                                                      "kv_block_tokens": 64})
    stub, runtime = handle.stub, handle.runtime
    try:
        original = await create(stub)
        await append(stub, original, HISTORY * 4)  # 240 tokens: a slab of 256, the fork's as much again
        await generate(stub, original, 4)
        used = runtime.pool.used_bytes
        assert await status_of(fork(stub, original)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert runtime.registry.num_active == 1 and runtime.pool.num_slabs == 1
        assert runtime.pool.used_bytes == used
        assert len((await generate(stub, original, 4)).tokens) == 4  # the source is unharmed
        await close(stub, original)
        assert runtime.pool.used_bytes == 0
    finally:
        await handle.stop()


@pytest.mark.parametrize("mode", ["ngram", "draft"])
async def test_fork_and_import_under_speculation(loaded_model, mode):
    """The fork copies the n-gram index or the draft slab; an import's draft slab catches up."""
    speculative = {"mode": mode, "num_draft_tokens": 4}
    if mode == "draft":
        speculative.update(draft_model="the model itself")
    handle = await start_server(loaded_model, speculative=speculative,
                                draft=loaded_model if mode == "draft" else None)
    stub = handle.stub
    try:
        original = await create(stub)
        await append(stub, original, HISTORY)
        await generate(stub, original, 12)
        copy = await fork(stub, original)
        chunks = [c async for c in stub.ExportSession(pb.ExportSessionRequest(session_id=original),
                                                      timeout=TIMEOUT_S)]
        moved = (await stub.ImportSession(iter(chunks), timeout=TIMEOUT_S)).session_id
        streams = [(await generate(stub, s, 16)).tokens for s in (original, copy, moved)]
        assert streams[0] == streams[1] == streams[2]
        for session_id in (original, copy, moved):
            await close(stub, session_id)
        assert handle.runtime.pool.used_bytes == 0
    finally:
        await handle.stop()
