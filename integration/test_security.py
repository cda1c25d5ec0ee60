"""API keys and session ownership, bind safety, engine death, stalled consumers and drain."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kakeya.actors.messages import Generate, GenerateParams
from kakeya.actors.token_stream import Done, StopReason, TokenStream
from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.runtime.common.config import ServerConfig
from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.engine.sampler import SamplingParams
from kakeya.runtime.server.server import RuntimeServer

from .harness import TIMEOUT_S, append, close, create, eventually, generate, runtime_config, start_server, status_of

PROMPT = list(range(700, 730))


def _as(key: str | None):
    """Call options that present `key` as a bearer token."""
    return {"metadata": (("authorization", f"Bearer {key}"),)} if key else {}


async def test_api_keys_and_session_ownership(loaded_model):
    handle = await start_server(loaded_model, server={"api_keys": ("alpha-key", "beta-key")})
    stub = handle.stub
    try:
        create_request = pb.CreateSessionRequest()
        for who in (None, "wrong-key"):
            code = await status_of(stub.CreateSession(create_request, timeout=TIMEOUT_S, **_as(who)))
            assert code == grpc.StatusCode.UNAUTHENTICATED
        assert await status_of(stub.GetRuntimeInfo(pb.GetRuntimeInfoRequest(), timeout=TIMEOUT_S)) == \
            grpc.StatusCode.UNAUTHENTICATED
        session_id = (await stub.CreateSession(create_request, timeout=TIMEOUT_S, **_as("alpha-key"))).session_id
        append_request = pb.AppendTokensRequest(session_id=session_id, token_ids=PROMPT)
        assert (await stub.AppendTokens(append_request, timeout=TIMEOUT_S, **_as("alpha-key"))).history_length == 30
        # Another key sees nothing: the same answer as for a session that does not exist.
        info_request = pb.GetSessionInfoRequest(session_id=session_id)
        for call in (stub.AppendTokens(append_request, timeout=TIMEOUT_S, **_as("beta-key")),
                     stub.GetSessionInfo(info_request, timeout=TIMEOUT_S, **_as("beta-key")),
                     stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=TIMEOUT_S,
                                       **_as("beta-key"))):
            assert await status_of(call) == grpc.StatusCode.NOT_FOUND
        stream = stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=2), timeout=TIMEOUT_S,
                               **_as("beta-key"))
        assert await status_of(stream.read()) == grpc.StatusCode.NOT_FOUND
        # Health stays open for probes without a key.
        health = health_pb2_grpc.HealthStub(handle.channel)
        assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)).status == \
            health_pb2.HealthCheckResponse.SERVING
        closed = await stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=TIMEOUT_S,
                                         **_as("alpha-key"))
        assert closed.final_history_length == 30
    finally:
        await handle.stop()


async def test_list_sessions_shows_each_key_its_own_sessions(loaded_model):
    from kakeya import Client

    from .test_sdk_chat import run_python

    handle = await start_server(loaded_model, server={"api_keys": ("alpha-key", "beta-key")})
    stub, address = handle.stub, handle.server.address

    async def open_as(key: str, label: str) -> str:
        request = pb.CreateSessionRequest(client_label=label)
        return (await stub.CreateSession(request, timeout=TIMEOUT_S, **_as(key))).session_id

    async def listed(key: str | None) -> list[tuple[str, str]]:
        reply = await stub.ListSessions(pb.ListSessionsRequest(), timeout=TIMEOUT_S, **_as(key))
        return [(entry.session_id, entry.client_label) for entry in reply.sessions]

    try:
        alpha = [await open_as("alpha-key", "a1"), await open_as("alpha-key", "a2")]
        beta = await open_as("beta-key", "b1")
        assert await listed("alpha-key") == [(alpha[0], "a1"), (alpha[1], "a2")]
        assert await listed("beta-key") == [(beta, "b1")]
        for who in (None, "wrong-key"):
            assert await status_of(listed(who)) == grpc.StatusCode.UNAUTHENTICATED
        async with Client(address, api_key="beta-key") as client:
            assert [e.session_id for e in await asyncio.wait_for(client.list_sessions(), TIMEOUT_S)] == [beta]
        code, out, err = await run_python("-m", "kakeya.runtime.server.cli", "sessions", "--address", address,
                                          "--api-key", "alpha-key")
        assert code == 0 and [line.split()[0] for line in out.splitlines()] == alpha, err
        code, out, err = await run_python("-m", "kakeya.runtime.server.cli", "sessions", "--address", address,
                                          "--api-key", "wrong-key")
        assert code == 1 and out == "" and "UnauthenticatedError" in err and "Traceback" not in err
        for key, session_id in (("alpha-key", alpha[0]), ("alpha-key", alpha[1]), ("beta-key", beta)):
            await stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=TIMEOUT_S, **_as(key))
        assert await listed("alpha-key") == await listed("beta-key") == []
    finally:
        await handle.stop()


def test_public_bind_without_keys_is_refused():
    with pytest.raises(ValueError, match="without API keys"):
        ServerConfig(host="0.0.0.0")
    assert ServerConfig(host="0.0.0.0", api_keys=("k",)).host == "0.0.0.0"
    assert ServerConfig(host="0.0.0.0", allow_insecure_bind=True).allow_insecure_bind


async def test_a_second_server_cannot_share_the_port(server):
    port = int(server.server.address.rsplit(":", 1)[1])
    second = RuntimeServer(runtime_config(server={"port": port}))
    with pytest.raises(FailedPrecondition, match="cannot listen"):
        await second.start()


async def test_a_name_whose_port_is_taken_on_one_address_is_refused(server):
    """"localhost" is 127.0.0.1 and ::1: with the port taken on 127.0.0.1, gRPC alone would listen
    on ::1 only, and clients of "localhost" would reach the other server."""
    port = int(server.server.address.rsplit(":", 1)[1])
    second = RuntimeServer(runtime_config(server={"host": "localhost", "port": port}))
    with pytest.raises(FailedPrecondition, match=f"cannot listen on localhost:{port}: the port is in use on 127.0.0.1"):
        await second.start()


async def test_engine_death_fails_in_flight_calls_and_turns_health_off(loaded_model):
    deaths: list[BaseException] = []
    handle = await start_server(loaded_model, server={"stall_timeout_s": 0.2})
    handle.runtime.scheduler._on_crash = deaths.append  # what `kakeya serve` turns into exit code 70
    try:
        session_id = await create(handle.stub)
        await append(handle.stub, session_id, PROMPT)
        handle.runtime.runner.fault_error = RuntimeError("device lost")
        assert await status_of(generate(handle.stub, session_id, 4)) == grpc.StatusCode.UNAVAILABLE
        await eventually(lambda: bool(deaths), TIMEOUT_S, "the engine death to be reported")
        assert await status_of(generate(handle.stub, session_id, 4)) == grpc.StatusCode.UNAVAILABLE
        await eventually(lambda: not handle.server.is_serving, TIMEOUT_S, "health to turn NOT_SERVING")
    finally:
        handle.runtime.runner.fault_error = None
        await handle.stop()


async def test_a_consumer_that_stops_reading_is_cut_off(loaded_model):
    handle = await start_server(loaded_model, engine={"consumer_stall_timeout_s": 0.3})
    runtime = handle.runtime
    try:
        session_id = await create(handle.stub)
        await append(handle.stub, session_id, PROMPT)
        # Drive the session actor directly with a stream nobody reads.
        stream = TokenStream()
        runtime.registry.get(session_id).send(Generate(GenerateParams(5000, SamplingParams()), stream))
        await eventually(lambda: stream.is_finished, TIMEOUT_S, "the stalled generate to be stopped")
        events = [event async for event in stream]
        assert isinstance(events[-1], Done) and events[-1].stop_reason is StopReason.CANCELLED
        assert 0 < events[-1].generated_token_count < 5000
        assert runtime.counter("kakeya_stream_stalled_total") == 1
        assert len((await generate(handle.stub, session_id, 3)).tokens) == 3  # still usable
        await close(handle.stub, session_id)
    finally:
        await handle.stop()


async def test_draining_answers_unavailable_and_lets_running_work_finish(loaded_model):
    handle = await start_server(loaded_model)
    session_id = await create(handle.stub)
    await append(handle.stub, session_id, PROMPT)
    running = asyncio.ensure_future(generate(handle.stub, session_id, 12))
    await eventually(lambda: handle.runtime.scheduler.num_running == 1, TIMEOUT_S, "the generate to start")
    stopping = asyncio.ensure_future(handle.server.stop(TIMEOUT_S))
    await eventually(lambda: handle.server.servicer.is_draining, TIMEOUT_S, "draining to begin")
    assert await status_of(create(handle.stub)) == grpc.StatusCode.UNAVAILABLE
    finished = await asyncio.wait_for(running, TIMEOUT_S)
    assert len(finished.tokens) == 12 and finished.done.stop_reason == pb.GenerateDone.STOP_REASON_MAX_TOKENS
    await asyncio.wait_for(stopping, TIMEOUT_S)
    await handle.channel.close()


async def test_tls_serves_only_encrypted_clients(loaded_model, tmp_path):
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    # Port 0 on "localhost": a port free on both 127.0.0.1 and ::1 (runtime/listen_port.py), so a
    # plaintext client of "localhost" cannot reach the shared test server instead.
    handle = await start_server(loaded_model, server={"host": "localhost", "tls_cert": str(cert),
                                                      "tls_key": str(key)})
    port = handle.server.address.rsplit(":", 1)[1]
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            from kakeya.proto.v1 import runtime_pb2_grpc

            stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
            session_id = await create(stub)
            assert await append(stub, session_id, PROMPT) == len(PROMPT)
            await close(stub, session_id)
        # The SDK: a trust root given as a path (bytes work too) opens a TLS channel.
        from kakeya import Client, RuntimeUnavailableError

        async with Client(f"localhost:{port}", root_certificates=cert, timeout_s=TIMEOUT_S) as client:
            async with client.session(initial_tokens=PROMPT) as session:
                assert len(await asyncio.wait_for(session.generate(3).collect(), TIMEOUT_S)) == 3
        async with Client(f"localhost:{port}", timeout_s=5) as plaintext:
            with pytest.raises(RuntimeUnavailableError):
                await plaintext.create_session()
        # A plaintext client cannot talk to it.
        assert await status_of(create(handle.stub)) == grpc.StatusCode.UNAVAILABLE
    finally:
        await handle.stop()
