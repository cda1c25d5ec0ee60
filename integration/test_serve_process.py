"""The `kakeya serve` command as users run it: a process of its own, on a unix socket, drained by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import grpc
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
            # The in-flight stream ends cleanly with CANCELLED rather than hanging or erroring.
            last = list(stream)[-1]
            assert last.done.stop_reason == pb.GenerateDone.STOP_REASON_CANCELLED
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


def test_bad_model_exits_non_zero_with_a_clear_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kakeya.runtime.server.cli", "serve", "--port", "0", "--model", str(tmp_path / "x.gguf")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "no such GGUF file" in result.stderr
