"""The fields every RPC's log lines carry: a client's oversized session id is bounded, and
CreateSession's line names the session it created."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import structlog

from actor_fixtures import TIMEOUT_S, load
from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc
from kakeya.runtime.common.config import RuntimeConfig, ServerConfig
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.server import RuntimeServer
from kakeya.runtime.server.servicer import _begin


def test_a_huge_session_id_is_logged_as_a_prefix():
    try:
        _begin("GetSessionInfo", pb.GetSessionInfoRequest(session_id="a" * 20_000))
        fields = structlog.contextvars.get_contextvars()
        assert fields["rpc"] == "GetSessionInfo"
        assert fields["session_id"] == "a" * 32 + "..."
        _begin("GetSessionInfo", pb.GetSessionInfoRequest(session_id="b" * 32))
        assert structlog.contextvars.get_contextvars()["session_id"] == "b" * 32
    finally:
        structlog.contextvars.clear_contextvars()


@contextlib.contextmanager
def captured_logs():
    """Every event logged meanwhile, with the request's bound fields, as configure_logging merges them."""
    saved, capture = structlog.get_config(), structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)


async def test_create_sessions_rpc_finished_line_names_the_new_session():
    config = RuntimeConfig(server=ServerConfig(host="127.0.0.1", port=0))
    server = RuntimeServer(config)
    address = await asyncio.wait_for(server.start(), TIMEOUT_S)
    await asyncio.wait_for(server.attach(Host(config, load().loaded, on_engine_death=lambda exc: None)),
                           TIMEOUT_S)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
            with captured_logs() as entries:
                reply = await stub.CreateSession(pb.CreateSessionRequest(), timeout=TIMEOUT_S)
                await stub.CloseSession(pb.CloseSessionRequest(session_id=reply.session_id), timeout=TIMEOUT_S)
    finally:
        await asyncio.wait_for(server.stop(0), TIMEOUT_S)
    finished = {entry["rpc"]: entry for entry in entries if entry["event"] == "rpc_finished"}
    assert finished["CreateSession"]["status"] == "OK"
    assert finished["CreateSession"]["session_id"] == reply.session_id == finished["CloseSession"]["session_id"]
