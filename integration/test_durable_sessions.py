"""--session-dir: sessions come back after a restart under their ids, with their KV reloaded; a
full disk never fails a request; a corrupt file loses only its own session."""

from __future__ import annotations

import os
import stat
import struct

import grpc
import pytest

from kakeya.proto.v1 import runtime_pb2 as pb

from .harness import TIMEOUT_S, append, close, create, generate, info, start_server, status_of

HISTORY = [42, 17, 99, 3000, 12, 12, 8, 1500, 640, 77, 5, 901] * 4


async def _serve(loaded_model, directory, **engine):
    return await start_server(loaded_model, limits={"session_dir": str(directory)}, engine=engine or None)


async def _ids(stub) -> set[str]:
    reply = await stub.ListSessions(pb.ListSessionsRequest(), timeout=TIMEOUT_S)
    return {entry.session_id for entry in reply.sessions}


async def _expected(stub, session_id: str, max_tokens: int) -> list[int]:
    """What the session would generate next, read from a fork that is then closed (with its file)."""
    reply = await stub.ForkSession(pb.ForkSessionRequest(session_id=session_id), timeout=TIMEOUT_S)
    try:
        return (await generate(stub, reply.session_id, max_tokens)).tokens
    finally:
        await close(stub, reply.session_id)


async def test_sessions_survive_a_restart_with_their_kv(loaded_model, tmp_path):
    first = await _serve(loaded_model, tmp_path)
    try:
        talked = await create(first.stub, label="agent", eos=(5,))
        await append(first.stub, talked, HISTORY)
        turn = (await generate(first.stub, talked, 6)).tokens
        await append(first.stub, talked, [7, 8, 9])
        await generate(first.stub, talked, 6)
        pending = await create(first.stub)
        await append(first.stub, pending, HISTORY[:10])
        before = {s: await info(first.stub, s) for s in (talked, pending)}
        expected = await _expected(first.stub, talked, 12)
        closed = await create(first.stub)
        await close(first.stub, closed)  # a client's close removes the file
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == sorted(f"{s}.kks" for s in (talked, pending))
        assert all(stat.S_IMODE(os.stat(tmp_path / f).st_mode) == 0o600 for f in files)
    finally:
        await first.stop()
    second = await _serve(loaded_model, tmp_path)
    try:
        assert await _ids(second.stub) == {talked, pending}
        for session_id, was in before.items():
            now = await info(second.stub, session_id)
            assert (now.history_length, now.pending_tokens, now.kv_resident_tokens, now.client_label,
                    list(now.eos_token_ids)) == (was.history_length, was.pending_tokens, was.kv_resident_tokens,
                                                 was.client_label, list(was.eos_token_ids))
        assert (await info(second.stub, talked)).kv_resident_tokens == len(HISTORY) + len(turn) + 3 + 5
        resumed = await generate(second.stub, talked, 12)
        assert resumed.tokens == expected
        assert resumed.done.prefill_token_count == 1  # the KV was reloaded, not recomputed
        for session_id in (talked, pending):
            await close(second.stub, session_id)
        assert not list(tmp_path.iterdir())
        assert second.runtime.pool.used_bytes == 0
    finally:
        await second.stop()


async def test_a_full_disk_is_a_metric_not_a_failed_request(loaded_model, tmp_path):
    handle = await _serve(loaded_model, tmp_path)
    try:
        session_id = await create(handle.stub)
        await append(handle.stub, session_id, HISTORY)
        path = tmp_path / f"{session_id}.kks"
        path.unlink()
        path.symlink_to("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
        generated = await generate(handle.stub, session_id, 8)
        assert len(generated.tokens) == 8 and generated.done.stop_reason == pb.GenerateDone.STOP_REASON_MAX_TOKENS
        assert handle.runtime.counter("kakeya_session_store_errors_total", op="write") == 1
        # The next request writes the file whole again, in place of the broken one.
        await append(handle.stub, session_id, [1, 2])
        assert path.is_file() and not path.is_symlink()
        assert handle.runtime.counter("kakeya_session_store_errors_total", op="write") == 1
        await close(handle.stub, session_id)
    finally:
        await handle.stop()


async def test_an_unwritable_directory_never_fails_a_request(loaded_model, tmp_path):
    directory = tmp_path / "sessions"
    handle = await _serve(loaded_model, directory)
    try:
        directory.rmdir()
        directory.write_text("not a directory")  # the directory is gone: every write fails
        session_id = await create(handle.stub)
        await append(handle.stub, session_id, HISTORY)
        assert len((await generate(handle.stub, session_id, 4)).tokens) == 4
        assert handle.runtime.counter("kakeya_session_store_errors_total", op="write") >= 3
        await close(handle.stub, session_id)
    finally:
        await handle.stop()


async def _two_sessions(loaded_model, directory) -> tuple[str, str]:
    handle = await _serve(loaded_model, directory)
    try:
        ids = []
        for tokens in (HISTORY, HISTORY[::-1]):
            session_id = await create(handle.stub)
            await append(handle.stub, session_id, tokens)
            await generate(handle.stub, session_id, 4)
            ids.append(session_id)
        return ids[0], ids[1]
    finally:
        await handle.stop()


async def test_corrupt_truncated_and_foreign_files(loaded_model, tmp_path, caplog):
    damaged, torn = await _two_sessions(loaded_model, tmp_path)
    raw = bytearray((tmp_path / f"{damaged}.kks").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / f"{damaged}.kks").write_bytes(raw)
    whole = (tmp_path / f"{torn}.kks").read_bytes()
    _, _, meta_bytes, data_bytes = struct.unpack_from(">4scIQ", whole)  # the header record
    second = struct.calcsize(">4scIQ") + meta_bytes + data_bytes + 32
    with open(tmp_path / f"{torn}.kks", "ab") as file:
        file.write(whole[second:second + 60])  # the start of a record, as a crash mid-write leaves it
    (tmp_path / ("ab" * 16 + ".kks")).write_bytes(b"KKS1 not a session at all")
    handle = await _serve(loaded_model, tmp_path)
    try:
        assert await _ids(handle.stub) == {torn}
        assert (await info(handle.stub, torn)).history_length == len(HISTORY) + 4
        assert (tmp_path / f"{damaged}.kks.corrupt").exists()
        assert handle.runtime.counter("kakeya_session_store_errors_total", op="load") == 2
        assert await status_of(info(handle.stub, damaged)) == grpc.StatusCode.NOT_FOUND
        await close(handle.stub, torn)
    finally:
        await handle.stop()
    # A bounded-mode server does not take full-attention files: they stay for a server that does.
    kept = await _two_sessions(loaded_model, tmp_path / "kept")
    bounded = await _serve(loaded_model, tmp_path / "kept", sink_tokens=4, window_tokens=48)
    try:
        assert await _ids(bounded.stub) == set()
        assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == sorted(f"{s}.kks" for s in kept)
    finally:
        await bounded.stop()


@pytest.mark.parametrize("keys", [("alpha-key", "beta-key")])
async def test_a_restored_session_stays_bound_to_its_api_key(loaded_model, tmp_path, keys):
    def call(key):
        return (("authorization", f"Bearer {key}"),)

    async def serve():
        return await start_server(loaded_model, limits={"session_dir": str(tmp_path)}, server={"api_keys": keys})

    handle = await serve()
    try:
        reply = await handle.stub.CreateSession(pb.CreateSessionRequest(), metadata=call(keys[0]), timeout=TIMEOUT_S)
        session_id = reply.session_id
    finally:
        await handle.stop()
    handle = await serve()
    try:
        request = pb.GetSessionInfoRequest(session_id=session_id)
        assert await status_of(handle.stub.GetSessionInfo(request, metadata=call(keys[1]))) == \
            grpc.StatusCode.NOT_FOUND
        assert await status_of(handle.stub.GetSessionInfo(request, metadata=call(keys[0]))) == grpc.StatusCode.OK
        await handle.stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), metadata=call(keys[0]),
                                       timeout=TIMEOUT_S)
    finally:
        await handle.stop()


async def test_bounded_sessions_fork_and_come_back_across_compaction(loaded_model, tmp_path):
    """Sink 4 + window 48: compaction moves the slab's rows, so the next record holds them all again."""
    engine = {"sink_tokens": 4, "window_tokens": 48, "prefill_chunk_tokens": 16}
    first = await _serve(loaded_model, tmp_path, **engine)
    try:
        session_id = await create(first.stub)
        await append(first.stub, session_id, HISTORY * 3)
        await generate(first.stub, session_id, 40)
        await generate(first.stub, session_id, 100)  # past the slab's capacity: compaction
        [kv] = first.runtime.pool.sessions()
        assert kv.num_evicted > 0 and kv.window_start > 4
        expected = await _expected(first.stub, session_id, 10)  # a fork across compaction
        resident = (await info(first.stub, session_id)).kv_resident_tokens
    finally:
        await first.stop()
    second = await _serve(loaded_model, tmp_path, **engine)
    try:
        assert (await info(second.stub, session_id)).kv_resident_tokens == resident
        resumed = await generate(second.stub, session_id, 10)
        assert resumed.tokens == expected and resumed.done.prefill_token_count == 1
        await close(second.stub, session_id)
    finally:
        await second.stop()
