"""Durable sessions across real process deaths: `kakeya serve --session-dir` killed with SIGKILL
in the middle of a stream, then stopped by SIGTERM, and started again each time."""

from __future__ import annotations

import signal
import subprocess
import sys

import grpc

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc

from .test_serve_process import _wait_serving

HISTORY = [42, 17, 99, 3000, 12, 12, 8, 1500, 640, 77, 5, 901] * 4
CALL_S = 120


def _serve(socket_path, session_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kakeya.runtime.server.cli", "serve", "--unix-socket", str(socket_path),
         "--session-dir", str(session_dir), "--log-format", "json", "--grace-s", "1", "--metrics-port", "-1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _generate(stub, session_id: str, max_tokens: int) -> tuple[list[int], pb.GenerateDone]:
    tokens, done = [], None
    for response in stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=max_tokens), timeout=CALL_S):
        if response.WhichOneof("payload") == "token_id":
            tokens.append(response.token_id)
        elif response.WhichOneof("payload") == "done":
            done = response.done
    return tokens, done


def _history(stub, session_id: str) -> int:
    return stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=session_id), timeout=CALL_S).history_length


def _fresh(stub, history: list[int], max_tokens: int) -> list[int]:
    session_id = stub.CreateSession(pb.CreateSessionRequest(no_default_eos=True), timeout=CALL_S).session_id
    stub.AppendTokens(pb.AppendTokensRequest(session_id=session_id, token_ids=history), timeout=CALL_S)
    tokens, _ = _generate(stub, session_id, max_tokens)
    stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=CALL_S)
    return tokens


def _first_life(stub) -> tuple[str, str, list[int]]:
    """Two completed turns and a fork, then a Generate left running; returns the ids and the history."""
    session_id = stub.CreateSession(pb.CreateSessionRequest(no_default_eos=True), timeout=CALL_S).session_id
    stub.AppendTokens(pb.AppendTokensRequest(session_id=session_id, token_ids=HISTORY), timeout=CALL_S)
    first, _ = _generate(stub, session_id, 5)
    stub.AppendTokens(pb.AppendTokensRequest(session_id=session_id, token_ids=[7, 8, 9]), timeout=CALL_S)
    second, _ = _generate(stub, session_id, 6)
    fork_id = stub.ForkSession(pb.ForkSessionRequest(session_id=session_id), timeout=CALL_S).session_id
    return session_id, fork_id, HISTORY + first + [7, 8, 9] + second


def test_sessions_survive_kill_9_mid_stream_and_a_sigterm_restart(tmp_path):
    socket_path, session_dir = tmp_path / "kakeya.sock", tmp_path / "sessions"
    process = _serve(socket_path, session_dir)
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            _wait_serving(channel, process)
            stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
            session_id, fork_id, history = _first_life(stub)
            stream = stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=5000), timeout=CALL_S)
            for _ in range(3):
                assert next(stream).WhichOneof("payload") == "token_id"
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=60) == -signal.SIGKILL
        socket_path.unlink(missing_ok=True)
        process = _serve(socket_path, session_dir)
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            _wait_serving(channel, process)
            stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
            # The completed turns are all there; the interrupted one is not there at all.
            assert _history(stub, session_id) == _history(stub, fork_id) == len(history)
            tokens, done = _generate(stub, session_id, 8)
            assert done.prefill_token_count == 1  # its KV was reloaded, not prefilled again
            assert tokens == _fresh(stub, history, 8)
            history += tokens
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
        process = _serve(socket_path, session_dir)
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            _wait_serving(channel, process)
            stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
            assert _history(stub, session_id) == len(history)
            tokens, done = _generate(stub, session_id, 4)
            assert tokens == _fresh(stub, history, 4) and done.prefill_token_count == 1
            for closing in (session_id, fork_id):
                stub.CloseSession(pb.CloseSessionRequest(session_id=closing), timeout=CALL_S)
            assert not list(session_dir.iterdir())
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
