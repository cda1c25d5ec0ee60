"""The Python SDK against a real runtime on the embedded model: sessions, generation, values, errors.

Also the helpers test_sdk_streams.py shares.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import grpc
import pytest

from kakeya import (Client, FailedPreconditionError, InvalidArgumentError, RuntimeInfo, RuntimeUnavailableError,
                    SessionClosedError, SessionInfo, SessionNotFoundError, StopReason, SyncClient)

from .harness import TIMEOUT_S, eventually, start_server

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2]


async def bounded(awaitable):
    return await asyncio.wait_for(awaitable, TIMEOUT_S)


@pytest.fixture
async def client(server):
    async with Client(server.server.address) as client:
        yield client


async def solo_tokens(client: Client, prompt: list[int], max_tokens: int) -> list[int]:
    """What a session alone on the runtime generates from `prompt` (greedy), to max_tokens: PROMPT
    reaches the model's EOS at its fourth token, so these sessions opt out of it."""
    async with client.session(initial_tokens=prompt, default_eos=False) as session:
        return await bounded(session.generate(max_tokens=max_tokens).collect())


async def settle(server, session) -> None:
    """After a cancel: the scheduler dropped the job and the session finished its last message."""
    runtime = server.runtime
    await eventually(lambda: runtime.scheduler.num_running == 0, TIMEOUT_S, "the scheduler to drain")
    await eventually(lambda: runtime.registry.get(session.session_id).is_idle, TIMEOUT_S, "the session to settle")


async def test_create_round_trip(client, server):
    assert client.address == server.server.address
    session = await bounded(client.create_session(eos_token_ids=[49151, 49150], label="sdk"))
    assert len(session.session_id) == 32 and not session.is_closed
    info = await bounded(session.info())
    assert isinstance(info, SessionInfo)
    assert (info.history_length, info.pending_tokens, info.kv_live_bytes) == (0, 0, 0)
    assert info.client_label == "sdk" and info.eos_token_ids == (49150, 49151)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.history_length = 3  # type: ignore[misc]
    assert await bounded(session.close()) == 0
    assert await bounded(session.close()) == 0 and session.is_closed


async def test_initial_tokens_are_appended(client):
    session = await bounded(client.create_session(initial_tokens=PROMPT))
    info = await bounded(session.info())
    assert (info.history_length, info.pending_tokens) == (len(PROMPT), len(PROMPT))
    assert await bounded(session.close()) == len(PROMPT)


async def test_append_generate_and_stream_metadata(client):
    session = await bounded(client.create_session(default_eos=False))
    assert await bounded(session.append(PROMPT[:4])) == 4
    assert await bounded(session.append(PROMPT[4:])) == len(PROMPT)
    assert await bounded(session.append([])) == len(PROMPT)
    stream = session.generate(max_tokens=6)
    assert stream.stop_reason is None and not stream.is_done

    async def read() -> list[int]:
        return [token async for token in stream]

    tokens = await bounded(read())
    assert len(tokens) == 6 and all(isinstance(token, int) for token in tokens)
    assert stream.stop_reason is StopReason.MAX_TOKENS and stream.is_done
    assert (stream.generated_token_count, stream.prefill_token_count, stream.dropped_token_count) == (6, len(PROMPT), 0)
    assert 0 < stream.prefill_duration_s <= stream.total_duration_s
    with pytest.raises(RuntimeError):
        stream.__aiter__()  # a stream is read once
    info = await bounded(session.info())
    assert info.history_length == len(PROMPT) + 6
    assert info.kv_resident_tokens + info.pending_tokens == info.history_length
    assert info.kv_live_bytes > 0 and (info.inv1_violations, info.inv2_violations) == (0, 0)
    assert await bounded(session.generate(max_tokens=3).collect()) == (await solo_tokens(client, PROMPT, 9))[6:]
    assert await bounded(session.close()) == len(PROMPT) + 9


async def test_eos_stops_the_stream(client):
    expected = await solo_tokens(client, PROMPT, 8)
    async with client.session(eos_token_ids=[expected[2]], initial_tokens=PROMPT) as session:
        stream = session.generate(max_tokens=8)
        assert await bounded(stream.collect()) == expected[:expected.index(expected[2]) + 1]
        assert stream.stop_reason is StopReason.EOS


async def test_session_context_manager_closes(client, server):
    async with client.session(initial_tokens=PROMPT) as session:
        assert server.runtime.registry.num_active == 1
    assert session.is_closed and server.runtime.registry.num_active == 0
    with pytest.raises(LookupError, match="inside the block"):
        async with client.session() as session:
            raise LookupError("inside the block")
    assert session.is_closed and server.runtime.registry.num_active == 0


def _raise_in_sync_block(session) -> BaseException:
    try:
        with session:
            raise LookupError("the sync block's own error")
    except BaseException as exc:  # noqa: BLE001 - whatever left the block is the finding
        return exc
    raise AssertionError("the block's error was swallowed")


async def test_leaving_session_blocks_once_the_server_is_gone(loaded_model, caplog):
    handle = await start_server(loaded_model)
    try:
        with SyncClient(handle.server.address, timeout_s=TIMEOUT_S) as sync_client:
            async with Client(handle.server.address, timeout_s=TIMEOUT_S) as client:
                kept = await bounded(client.create_session(initial_tokens=PROMPT))
                sync_session = await bounded(asyncio.to_thread(sync_client.create_session, initial_tokens=PROMPT))
                with pytest.raises(LookupError, match="the block's own error") as caught:
                    async with client.session(initial_tokens=PROMPT) as session:
                        await handle.stop()  # the runtime goes away while the block runs
                        raise LookupError("the block's own error")
                # The close failed as well (the runtime is gone): noted on the block's error, not raised over it.
                assert not session.is_closed
                assert any("RuntimeUnavailableError" in note for note in caught.value.__notes__)
                sync_error = await bounded(asyncio.to_thread(_raise_in_sync_block, sync_session))
                assert isinstance(sync_error, LookupError) and not sync_session.is_closed
                # A block that succeeded: a close the gone runtime cannot take is logged, not raised.
                with caplog.at_level(logging.WARNING, logger="kakeya.session"):
                    async with client.attach_session(kept.session_id):
                        pass
                assert f"session {kept.session_id} was not closed" in caplog.text
                with pytest.raises(RuntimeUnavailableError):  # close() called directly still raises
                    await bounded(kept.close())
    finally:
        await handle.stop()


async def test_closed_session_raises_locally(client):
    session = await bounded(client.create_session(initial_tokens=PROMPT))
    assert await bounded(session.close()) == len(PROMPT)
    for call in (lambda: session.append([5]), session.info, lambda: session.generate(max_tokens=2).collect()):
        with pytest.raises(SessionClosedError) as caught:
            await bounded(call())
        assert caught.value.code is None
    # The runtime no longer knows the id, so a second RPC would fail: this close made none.
    assert await bounded(session.close()) == len(PROMPT)


async def test_unknown_session_is_not_found(client):
    bogus = client.attach_session("0" * 32)
    for call in (lambda: bogus.append([5]), bogus.info, bogus.close, lambda: bogus.generate(max_tokens=2).collect()):
        with pytest.raises(SessionNotFoundError) as caught:
            await bounded(call())
        assert caught.value.code is grpc.StatusCode.NOT_FOUND and "0" * 32 in caught.value.message
    # An id closed through another handle is gone too.
    session = await bounded(client.create_session(initial_tokens=PROMPT))
    assert await bounded(client.attach_session(session.session_id).close()) == len(PROMPT)
    with pytest.raises(SessionNotFoundError):
        await bounded(session.append([5]))


async def test_invalid_arguments(client, server):
    async with client.session(initial_tokens=PROMPT) as session:
        with pytest.raises(InvalidArgumentError) as caught:
            await bounded(session.generate(max_tokens=0).collect())
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT and "max_tokens" in str(caught.value)
        with pytest.raises(InvalidArgumentError):
            await bounded(session.append([5, server.runtime.loaded.vocab_size]))
        with pytest.raises(InvalidArgumentError):  # refused before any RPC: not a uint32
            await bounded(session.append([-1]))
        assert (await bounded(session.info())).history_length == len(PROMPT)


async def test_generate_on_empty_history_fails_precondition(client):
    async with client.session() as session:
        with pytest.raises(FailedPreconditionError) as caught:
            await bounded(session.generate(max_tokens=2).collect())
        assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION


async def test_runtime_info(client, server):
    info = await bounded(client.runtime_info())
    assert isinstance(info, RuntimeInfo)
    assert info.vocab_size == server.runtime.loaded.vocab_size and info.default_eos_token_ids == (2,)
    assert info.max_context_tokens == 8192 and info.deterministic and info.kv_bytes_per_token > 0
    assert (info.sink_tokens, info.window_tokens, info.active_sessions) == (0, 0, 0)


async def test_api_key_is_accepted(server):
    async with Client(server.server.address, api_key="secret", timeout_s=60) as client:
        assert client.timeout_s == 60
        assert (await bounded(client.runtime_info())).vocab_size > 0
