"""SDK streams against a real runtime: cancellation by break and by task, deadlines, concurrency, the
blocking facade, and a Unix-socket address. The sessions opt out of the model's EOS, which PROMPT
reaches at its fourth token: these streams run to max_tokens or to their cancel."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import grpc
import pytest

from kakeya import Client, DeadlineExceededError, SessionClosedError, StopReason, SyncClient
from kakeya.runtime.common.config import ServerConfig
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.server import RuntimeServer

from .harness import TIMEOUT_S, eventually, runtime_config
from .test_sdk import PROMPT, bounded, settle, solo_tokens


@pytest.fixture
async def client(server):
    async with Client(server.server.address) as client:
        yield client


async def test_break_cancels_the_generation(client, server):
    expected = await solo_tokens(client, PROMPT, 12)
    async with client.session(initial_tokens=PROMPT, default_eos=False) as session:
        stream = session.generate(max_tokens=1000)

        async def first_three() -> list[int]:
            tokens = []
            async for token in stream:
                tokens.append(token)
                if len(tokens) == 3:
                    break
            return tokens

        assert await bounded(first_three()) == expected[:3]
        assert stream.stop_reason is StopReason.CANCELLED and stream.generated_token_count == 3
        await settle(server, session)
        kept = (await bounded(session.info())).history_length - len(PROMPT)
        assert 3 <= kept < 1000
        # Reusable, continuing from the history as it stands.
        more = await bounded(session.generate(max_tokens=12 - kept).collect()) if kept < 12 else []
        assert (await bounded(session.info())).history_length == len(PROMPT) + max(kept, 12)
        if kept < 12:
            assert expected[:kept] + more == expected


async def test_cancelling_the_consumer_cancels_the_generation(client, server):
    async with client.session(initial_tokens=PROMPT, default_eos=False) as session:
        stream = session.generate(max_tokens=1000)
        tokens: list[int] = []
        two_read = asyncio.Event()

        async def consume() -> None:
            async for token in stream:
                tokens.append(token)
                if len(tokens) == 2:
                    two_read.set()

        task = asyncio.create_task(consume())
        await bounded(two_read.wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(task)
        assert stream.stop_reason is StopReason.CANCELLED
        await settle(server, session)
        assert (await bounded(session.info())).history_length < len(PROMPT) + 1000
        assert len(await bounded(session.generate(max_tokens=2).collect())) == 2


async def test_deadline_on_a_generation(client, server):
    async with client.session(initial_tokens=PROMPT, default_eos=False) as session:
        with pytest.raises(DeadlineExceededError) as caught:
            await bounded(session.generate(max_tokens=1000, timeout_s=0.05).collect())
        assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        await settle(server, session)


async def test_concurrent_sessions_get_their_solo_tokens(client):
    # Eight different histories, each held by two sessions, all sixteen streaming at once; the
    # solo references are computed once per history to keep the test short on a busy CPU.
    distinct = [PROMPT + [300 + 7 * i] * (1 + i % 3) for i in range(8)]
    solo = [await solo_tokens(client, prompt, 8) for prompt in distinct]
    prompts, expected = distinct + distinct[::-1], solo + solo[::-1]

    async def run(prompt: list[int], minimum: int) -> list[int]:
        async with client.session(initial_tokens=prompt, default_eos=False) as session:
            return await session.generate(max_tokens=8, min_tokens_per_message=minimum).collect()

    # Half the streams hold tokens for messages of 3: the same ids, one at a time, come out.
    runs = (run(prompt, 1 + 2 * (i % 2)) for i, prompt in enumerate(prompts))
    assert await bounded(asyncio.gather(*runs)) == expected


def _sync_round_trip(address: str) -> dict:
    with SyncClient(address) as client:
        facts = {"address": client.address, "vocab_size": client.runtime_info().vocab_size}
        session = client.create_session(initial_tokens=PROMPT, default_eos=False)
        stream = session.generate(max_tokens=6)
        facts["tokens"] = [token for token in stream]
        facts["stop_reason"], facts["generated"] = stream.stop_reason, stream.generated_token_count
        broken = session.generate(max_tokens=1000)
        for _ in broken:
            break
        facts["broken_stop_reason"] = broken.stop_reason
        facts["history_length"] = session.info().history_length
        facts["final_length"] = session.close()
        facts["second_close"] = session.close()
        try:
            session.append([5])
        except SessionClosedError:
            facts["closed_error"] = True
        with client.session(initial_tokens=PROMPT, default_eos=False) as other:
            facts["collected"] = other.generate(max_tokens=6, min_tokens_per_message=4).collect()
        facts["other_closed"] = other.is_closed
    facts["client_closed"] = client.is_closed
    return facts


async def test_sync_facade(client, server):
    expected = await solo_tokens(client, PROMPT, 6)
    threads_before = {thread.name for thread in threading.enumerate()}
    facts = await bounded(asyncio.to_thread(_sync_round_trip, server.server.address))
    assert facts["address"] == server.server.address and facts["vocab_size"] > 0
    assert facts["tokens"] == expected == facts["collected"]
    assert (facts["stop_reason"], facts["generated"]) == (StopReason.MAX_TOKENS, 6)
    assert facts["broken_stop_reason"] is StopReason.CANCELLED
    # The close is ordered after the cancelled generation, so it counts the token that was read.
    assert facts["history_length"] >= len(PROMPT) + 6
    assert facts["final_length"] == facts["second_close"] >= max(facts["history_length"], len(PROMPT) + 7)
    assert facts["closed_error"] and facts["other_closed"] and facts["client_closed"]
    # The private loop thread is gone once the client is closed.
    assert {thread.name for thread in threading.enumerate()} - threads_before == set()
    await eventually(lambda: server.runtime.scheduler.num_running == 0, TIMEOUT_S, "the scheduler to drain")


async def test_unix_socket_address(loaded_model, tmp_path):
    config = dataclasses.replace(runtime_config(), server=ServerConfig(unix_socket=str(tmp_path / "k.sock")))
    server = RuntimeServer(config)
    address = await bounded(server.start())
    runtime = Host(config, loaded_model, on_engine_death=lambda exc: None)
    await bounded(server.attach(runtime))
    try:
        assert address == f"unix:{tmp_path / 'k.sock'}"
        async with Client(address) as client:
            assert client.address == address
            async with client.session(initial_tokens=PROMPT, default_eos=False) as session:
                assert len(await bounded(session.generate(max_tokens=4).collect())) == 4
                assert (await bounded(session.info())).history_length == len(PROMPT) + 4
        assert runtime.registry.num_active == 0
    finally:
        await bounded(server.stop(0))


async def test_api_key_travels_on_every_call(loaded_model):
    from kakeya import UnauthenticatedError

    from .harness import start_server

    handle = await start_server(loaded_model, server={"api_keys": ("sdk-key",)})
    try:
        async with Client(handle.server.address, api_key="sdk-key") as keyed:
            assert (await bounded(keyed.runtime_info())).vocab_size == 49152
            async with keyed.session(initial_tokens=PROMPT, default_eos=False) as session:
                assert len(await bounded(session.generate(max_tokens=2).collect())) == 2
                assert (await bounded(session.info())).history_length == len(PROMPT) + 2
        for key in (None, "other-key"):
            async with Client(handle.server.address, api_key=key) as stranger:
                with pytest.raises(UnauthenticatedError):
                    await bounded(stranger.create_session())
    finally:
        await handle.stop()
