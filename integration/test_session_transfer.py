"""ExportSession / ImportSession: a session moved to another runtime continues identically; a
damaged, truncated or foreign stream is refused with nothing made."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest

from kakeya import Client, FailedPreconditionError, InvalidArgumentError, SyncClient
from kakeya.proto.v1 import runtime_pb2 as pb

from .harness import TIMEOUT_S, append, close, create, generate, info, start_server, status_of

HISTORY = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2] * 6


async def export(stub, session_id: str) -> list[pb.SessionChunk]:
    call = stub.ExportSession(pb.ExportSessionRequest(session_id=session_id), timeout=TIMEOUT_S)
    return [chunk async for chunk in call]


async def import_(stub, chunks: list[pb.SessionChunk]) -> pb.ImportSessionResponse:
    return await stub.ImportSession(iter(chunks), timeout=TIMEOUT_S)


def _resealed(chunks: list[pb.SessionChunk]) -> list[pb.SessionChunk]:
    """The chunks with the trailer's checksum recomputed after an edit (a well-formed foreign stream)."""
    digest = hashlib.sha256(chunks[0].header.SerializeToString(deterministic=True))
    for chunk in chunks[1:-1]:
        digest.update(chunk.kv_data)
    return chunks[:-1] + [pb.SessionChunk(trailer=pb.SessionTrailer(sha256=digest.digest()))]


@pytest.fixture(scope="module")
async def second(loaded_model):
    handle = await start_server(loaded_model)
    yield handle
    await handle.stop()


async def test_export_import_on_a_second_server_continues_identically(stub, second):
    original = await create(stub, label="agent", eos=(7,))
    await append(stub, original, HISTORY)
    first = (await generate(stub, original, 8)).tokens
    chunks = await export(stub, original)
    assert chunks[0].WhichOneof("part") == "header" and chunks[-1].WhichOneof("part") == "trailer"
    assert chunks[0].header.num_fed == len(HISTORY) + 7  # the last generated token is pending
    moved = (await import_(second.stub, chunks)).session_id
    try:
        got = await info(second.stub, moved)
        assert got.history_length == len(HISTORY) + len(first)
        assert got.client_label == "agent" and list(got.eos_token_ids) == [7]
        assert got.kv_resident_tokens == (await info(stub, original)).kv_resident_tokens
        assert (await generate(second.stub, moved, 16)).tokens == (await generate(stub, original, 16)).tokens
    finally:
        await close(second.stub, moved)
        await close(stub, original)
    assert second.runtime.pool.num_slabs == 0 and second.runtime.registry.num_active == 0


async def test_a_session_with_only_pending_tokens_moves_too(stub, second):
    original = await create(stub)
    await append(stub, original, HISTORY)
    moved = (await import_(second.stub, await export(stub, original))).session_id
    try:
        assert (await info(second.stub, moved)).pending_tokens == len(HISTORY)
        assert (await generate(second.stub, moved, 8)).tokens == (await generate(stub, original, 8)).tokens
    finally:
        await close(second.stub, moved)
        await close(stub, original)


async def _refused(handle, chunks) -> grpc.StatusCode:
    runtime = handle.runtime
    before = (runtime.registry.num_active, runtime.pool.num_slabs, runtime.pool.used_bytes)
    code = await status_of(import_(handle.stub, chunks))
    assert (runtime.registry.num_active, runtime.pool.num_slabs, runtime.pool.used_bytes) == before
    return code


async def test_damaged_truncated_and_foreign_streams_are_refused(stub, second, loaded_model):
    original = await create(stub)
    await append(stub, original, HISTORY)
    await generate(stub, original, 4)
    chunks = await export(stub, original)
    await close(stub, original)
    flipped = bytearray(chunks[1].kv_data)
    flipped[100] ^= 0x01
    bad_sum = [chunks[0], pb.SessionChunk(kv_data=bytes(flipped)), *chunks[2:]]
    assert await _refused(second, bad_sum) == grpc.StatusCode.INVALID_ARGUMENT
    assert await _refused(second, chunks[:-1]) == grpc.StatusCode.INVALID_ARGUMENT  # no trailer
    assert await _refused(second, chunks[:1] + chunks[-1:]) == grpc.StatusCode.INVALID_ARGUMENT  # no KV bytes
    assert await _refused(second, chunks[1:]) == grpc.StatusCode.INVALID_ARGUMENT  # no header
    assert await _refused(second, []) == grpc.StatusCode.INVALID_ARGUMENT
    foreign = [pb.SessionChunk(header=pb.SessionHeader()), *chunks[1:]]
    foreign[0].header.CopyFrom(chunks[0].header)
    foreign[0].header.model_fingerprint = "0" * 64
    assert await _refused(second, _resealed(foreign)) == grpc.StatusCode.FAILED_PRECONDITION
    bounded = await start_server(loaded_model, engine={"sink_tokens": 4, "window_tokens": 48})
    try:
        assert await _refused(bounded, chunks) == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await bounded.stop()


async def test_sdk_fork_export_import(server, second):
    async with Client(server.server.address, timeout_s=TIMEOUT_S) as client, \
            Client(second.server.address, timeout_s=TIMEOUT_S) as other:
        async with client.session(initial_tokens=HISTORY, default_eos=False) as session:
            await session.generate(4).collect()
            async with await session.fork(label="branch") as branch:
                assert (await branch.info()).client_label == "branch"
                assert await branch.generate(6).collect() == await session.generate(6).collect()
            exported = await session.export()
            async with await other.import_session(exported) as moved:
                assert (await moved.info()).history_length == (await session.info()).history_length
                assert await moved.generate(6).collect() == await session.generate(6).collect()
            with pytest.raises(InvalidArgumentError):
                await other.import_session(exported[:-40])
            with pytest.raises(InvalidArgumentError):
                await other.import_session(b"not an export")


async def test_sync_facade_fork_export_import(server, second):
    def run() -> None:
        with SyncClient(server.server.address, timeout_s=TIMEOUT_S) as client, \
                SyncClient(second.server.address, timeout_s=TIMEOUT_S) as other:
            with client.session(initial_tokens=HISTORY, default_eos=False) as session:
                with session.fork() as branch:
                    assert branch.generate(5).collect() == session.generate(5).collect()
                with other.import_session(session.export()) as moved:
                    assert moved.generate(5).collect() == session.generate(5).collect()
    await asyncio.wait_for(asyncio.to_thread(run), TIMEOUT_S)


async def test_foreign_export_through_the_sdk(server, second, loaded_model):
    bounded = await start_server(loaded_model, engine={"sink_tokens": 4, "window_tokens": 48})
    try:
        async with Client(server.server.address, timeout_s=TIMEOUT_S) as client, \
                Client(bounded.server.address, timeout_s=TIMEOUT_S) as other:
            async with client.session(initial_tokens=HISTORY) as session:
                with pytest.raises(FailedPreconditionError):
                    await other.import_session(await session.export())
    finally:
        await bounded.stop()


async def test_undecodable_chunks_are_invalid_argument(server):
    """A chunk whose bytes do not parse reaches the servicer as a malformed request (never UNKNOWN)."""
    upload = server.channel.stream_unary("/kakeya.v1.RuntimeService/ImportSession",
                                         request_serializer=lambda raw: raw,
                                         response_deserializer=pb.ImportSessionResponse.FromString)
    assert await status_of(upload(iter([b"\xff\xff\xff"]), timeout=TIMEOUT_S)) == grpc.StatusCode.INVALID_ARGUMENT
    fork = server.channel.unary_unary("/kakeya.v1.RuntimeService/ForkSession", request_serializer=lambda raw: raw,
                                      response_deserializer=pb.ForkSessionResponse.FromString)
    assert await status_of(fork(b"\xff\xff\xff", timeout=TIMEOUT_S)) == grpc.StatusCode.INVALID_ARGUMENT
