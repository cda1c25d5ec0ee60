"""The `kakeya serve` command as users run it: a process of its own, on a unix socket, drained by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc

READY_TIMEOUT_S = 300


def _wait_serving(channel, process) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError("kakeya serve did not become ready")


def test_serve_on_unix_socket_then_drain_on_sigterm(tmp_path):
    socket_path = tmp_path / "kakeya.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "kakeya.runtime.server.cli", "serve", "--unix-socket", str(socket_path),
         "--log-format", "json", "--max-sessions", "4", "--grace-s", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            _wait_serving(channel, process)
            assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
            stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
            assert stub.GetRuntimeInfo(pb.GetRuntimeInfoRequest(), timeout=30).max_sessions == 4
            # No EOS stop: the stream must still be running when SIGTERM comes.
            create = pb.CreateSessionRequest(no_default_eos=True)
            session_id = stub.CreateSession(create, timeout=30).session_id
            stub.AppendTokens(pb.AppendTokensRequest(session_id=session_id, token_ids=[1, 2, 3, 4]), timeout=30)
            stream = stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=5000), timeout=120)
            first = next(stream)
            assert first.WhichOneof("payload") == "token_id"
            process.send_signal(signal.SIGTERM)
            # Cut at the end of the grace period by the drain, not by its client: UNAVAILABLE, so
            # the client can tell it from its own cancel and retry on another server.
            with pytest.raises(grpc.RpcError) as cut:
                for response in stream:
                    assert response.WhichOneof("payload") != "done", response
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            assert cut.value.details() == "the server is shutting down"
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    records = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")]
    events = [record["event"] for record in records]
    assert events.index("server_ready") < events.index("server_draining") < events.index("server_stopped")
    # The loaded model's objects are frozen out of the cyclic collector (server._freeze_loaded_objects).
    assert records[events.index("server_ready")]["gc_frozen_objects"] > 10_000
    finished = {record["rpc"]: record for record in records if record["event"] == "rpc_finished"}
    assert finished["CreateSession"]["session_id"] == session_id  # the id it created, not None
    assert finished["Generate"]["status"] == "UNAVAILABLE" and finished["Generate"]["session_id"] == session_id


def test_bad_model_exits_non_zero_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kakeya.runtime.server.cli", "serve", "--port", "0", "--model", str(tmp_path / "x.gguf")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "no such GGUF file" in result.stderr


@pytest.mark.parametrize("taken", ["--port", "--metrics-port"])
def test_a_taken_port_fails_at_once_with_one_line_before_the_model_loads(tmp_path, taken):
    """Every port is checked before the model loads, not found taken after many seconds of loading.
    The --model given does not exist: a check made after loading would end on that instead."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"--port": "0", "--metrics-port": "0", taken: str(port)}
        result = subprocess.run(
            [sys.executable, "-m", "kakeya.runtime.server.cli", "serve", "--host", "127.0.0.1",
             "--metrics-host", "127.0.0.1", *[item for pair in ports.items() for item in pair],
             "--log-format", "console", "--model", str(tmp_path / "absent.gguf")],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "server_start_failed" in lines[0] and f"cannot listen on 127.0.0.1:{port}: the port is in use" in lines[0]
    assert ("cannot serve /metrics" in lines[0]) == (taken == "--metrics-port")
