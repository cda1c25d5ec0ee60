"""The engine in a process of its own: the same streams as in the server's process, and real
faults: the engine process killed under a running Generate, and the front killed under its engine."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc
from kakeya.runtime.common.errors import EngineDead
from kakeya.runtime.engine.process import EngineProcess
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.server import RuntimeServer

from .harness import (TIMEOUT_S, ServerHandle, append, close, create, eventually, generate, info, runtime_config,
                      start_server)

LOAD_TIMEOUT_S = 600


async def _start(deaths: list[BaseException], speculative: dict | None = None,
                 limits: dict | None = None, engine: dict | None = None) -> ServerHandle:
    config = runtime_config(engine=engine, speculative=speculative, limits=limits)
    server = RuntimeServer(config)
    address = await server.start()
    process = EngineProcess(config)  # on the event loop's thread, as `kakeya serve` starts it
    runtime = await asyncio.wait_for(asyncio.to_thread(Host, config, None, on_engine_death=deaths.append,
                                                       engine_process=process), LOAD_TIMEOUT_S)
    await server.attach(runtime)
    channel = grpc.aio.insecure_channel(address)
    return ServerHandle(server, runtime, channel, runtime_pb2_grpc.RuntimeServiceStub(channel))


@pytest.fixture(scope="module")
async def remote():
    handle = await _start([])
    yield handle
    await handle.stop()


async def _turns(stub, prompts: list[list[int]], **sampling) -> list[list[int]]:
    """Two turns of every session at once: prompt + 12 tokens, then 5 more appended + 12 tokens."""
    ids = [await create(stub) for _ in prompts]
    await asyncio.gather(*(append(stub, sid, prompt) for sid, prompt in zip(ids, prompts)))
    first = await asyncio.gather(*(generate(stub, sid, 12, **sampling) for sid in ids))
    await asyncio.gather(*(append(stub, sid, [7, 8, 9, 10, 11]) for sid in ids))
    second = await asyncio.gather(*(generate(stub, sid, 12, **sampling) for sid in ids))
    for sid in ids:
        await close(stub, sid)
    return [a.tokens + b.tokens for a, b in zip(first, second)]


async def test_streams_match_the_in_process_engine(server, remote):
    prompts = [list(range(5, 5 + n)) for n in (3, 17, 40)]
    assert remote.runtime.engine_pid != os.getpid()
    assert await _turns(remote.stub, prompts) == await _turns(server.stub, prompts)
    seeded = dict(temperature=0.8, top_p=0.9, seed=42)
    assert await _turns(remote.stub, prompts, **seeded) == await _turns(server.stub, prompts, **seeded)
    # The pool's accounts in the front are back to zero, and the engine was told to free the slabs.
    await eventually(lambda: remote.runtime.pool.used_bytes == 0 and remote.runtime.pool.num_slabs == 0,
                     TIMEOUT_S, "the KV to be freed")
    reply = await remote.stub.GetRuntimeInfo(pb.GetRuntimeInfoRequest(), timeout=TIMEOUT_S)
    assert reply.forward_count > 0 and reply.kv_bytes_per_token == server.runtime.pool.shape.bytes_per_token
    assert remote.runtime.metrics.registry.get_sample_value("kakeya_engine_step_duration_seconds_count") > 0
    assert remote.runtime.metrics.registry.get_sample_value("kakeya_front_engine_wait_seconds_count") > 0
    # Greedy decode steps were run by the engine on its own and taken by the front.
    assert remote.runtime.counter("kakeya_engine_steps_ahead_total", outcome="taken") > 0


@pytest.mark.parametrize("speculative", [{"mode": "ngram", "num_draft_tokens": 4},
                                         {"mode": "draft", "draft_layers": 8, "num_draft_tokens": 2}],
                         ids=["ngram", "draft"])
async def test_speculative_streams_match_the_in_process_engine(loaded_model, speculative):
    """Drafts cross the boundary as tokens, draft-model requests as a slab id and a sampler key;
    the draft slab's positions come back with each step."""
    prompts = [[5, 6, 7, 5, 6, 7, 5, 6], list(range(30, 50))]
    local = await start_server(loaded_model, speculative=speculative)
    remote = await _start([], speculative)
    try:
        assert await _turns(remote.stub, prompts) == await _turns(local.stub, prompts)
        drafted = remote.runtime.counter("kakeya_spec_decode_draft_tokens_total")
        assert drafted == local.runtime.counter("kakeya_spec_decode_draft_tokens_total") and drafted > 0
        assert remote.runtime.registry.violations("inv1") == 0
    finally:
        await remote.stop()
        await local.stop()


async def _fork_export_import(stub, prompt: int = 40) -> tuple[list[int], ...]:
    """A session's turn, then a fork and an export/import of it taken mid-conversation, each
    continued; returns every stream."""
    session_id = await create(stub)
    await append(stub, session_id, list(range(5, 5 + prompt)))
    first = (await generate(stub, session_id, 6)).tokens
    fork = (await stub.ForkSession(pb.ForkSessionRequest(session_id=session_id), timeout=TIMEOUT_S)).session_id
    call = stub.ExportSession(pb.ExportSessionRequest(session_id=session_id), timeout=TIMEOUT_S)
    chunks = await asyncio.wait_for(_read_all(call), TIMEOUT_S)
    moved = (await stub.ImportSession(iter(chunks), timeout=TIMEOUT_S)).session_id
    streams = [first]
    for sid in (session_id, fork, moved):
        await append(stub, sid, [9, 10, 11])
        streams.append((await generate(stub, sid, 8)).tokens)
        await close(stub, sid)
    return tuple(streams)


async def _read_all(call) -> list:
    return [chunk async for chunk in call]


async def test_fork_export_and_import_cross_the_boundary(server, remote):
    """A fork's copy and an import's rows are KV operations the engine applies before its next
    step, and an export reads the slab in the engine: the same streams as in the server's process."""
    streams = await _fork_export_import(remote.stub)
    assert streams == await _fork_export_import(server.stub)
    assert streams[1] == streams[2] == streams[3]  # the fork and the import continue as the original does
    await eventually(lambda: remote.runtime.pool.num_slabs == 0, TIMEOUT_S, "the KV to be freed")
    assert remote.runtime.registry.violations("inv1") == 0


async def test_a_bounded_session_past_its_window_forks_and_moves_across_the_boundary(loaded_model):
    """Bounded slabs compact in the engine: a copy, a read-out and a write carry the rows kept and
    the window's start, and the streams match the in-process engine's."""
    engine = {"sink_tokens": 4, "window_tokens": 48, "prefill_chunk_tokens": 16}
    local = await start_server(loaded_model, engine=engine)
    remote = await _start([], engine=engine)
    try:
        streams = await _fork_export_import(remote.stub, prompt=90)
        assert streams == await _fork_export_import(local.stub, prompt=90)
        assert streams[1] == streams[2] == streams[3]
    finally:
        await remote.stop()
        await local.stop()


async def test_durable_sessions_are_written_and_reloaded_through_the_engine_process(tmp_path):
    """--session-dir with the engine in its own process: each turn's K/V is read out of the engine
    to disk, and a restarted server writes it back into a new engine's slab."""
    first = await _start([], limits={"session_dir": str(tmp_path)})
    try:
        session_id = await create(first.stub)
        await append(first.stub, session_id, list(range(5, 45)))
        await generate(first.stub, session_id, 6)
        fork = (await first.stub.ForkSession(pb.ForkSessionRequest(session_id=session_id),
                                             timeout=TIMEOUT_S)).session_id
        expected = (await generate(first.stub, fork, 8)).tokens
        await close(first.stub, fork)
        was = await info(first.stub, session_id)
    finally:
        await first.stop()
    second = await _start([], limits={"session_dir": str(tmp_path)})
    try:
        assert (await info(second.stub, session_id)).kv_resident_tokens == was.kv_resident_tokens > 0
        assert (await generate(second.stub, session_id, 8)).tokens == expected
        assert second.runtime.counter("kakeya_session_store_errors_total") == 0
    finally:
        await second.stop()


async def test_a_cancelled_generate_keeps_exactly_the_tokens_the_session_committed(server, remote):
    """The engine runs greedy rows ahead of the front; a cancel undoes what the front did not take,
    so the session's history, its KV and the next Generate are as if nothing had run ahead."""
    prompt = list(range(20, 44))
    sid = await create(remote.stub)
    await append(remote.stub, sid, prompt)
    call = remote.stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=400))
    read: list[int] = []
    async with asyncio.timeout(TIMEOUT_S):
        async for response in call:
            read.extend([response.token_id] if response.WhichOneof("payload") == "token_id"
                        else response.tokens.token_ids)
            if len(read) >= 6:
                call.cancel()
                break
    await eventually(lambda: remote.runtime.scheduler.num_running == 0, TIMEOUT_S, "the cancel")
    state = await info(remote.stub, sid)
    committed = state.history_length - len(prompt)
    assert len(read) <= committed < 400
    assert state.kv_resident_tokens + state.pending_tokens == state.history_length
    after = await generate(remote.stub, sid, 8)
    await close(remote.stub, sid)
    reference_id = await create(server.stub)
    await append(server.stub, reference_id, prompt)
    reference = (await generate(server.stub, reference_id, committed + 8)).tokens
    await close(server.stub, reference_id)
    assert read == reference[:len(read)] and after.tokens == reference[committed:]
    assert remote.runtime.registry.violations("inv1") == 0 and remote.runtime.registry.violations("inv2") == 0


async def test_a_killed_engine_fails_running_generates_within_a_second():
    deaths: list[BaseException] = []
    handle = await _start(deaths)
    try:
        sid = await create(handle.stub)
        await append(handle.stub, sid, [1, 2, 3, 4])
        call = handle.stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=5000))
        stream = call.__aiter__()
        first = await asyncio.wait_for(stream.__anext__(), TIMEOUT_S)
        assert first.WhichOneof("payload") in ("token_id", "tokens")
        os.kill(handle.runtime.engine_pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async with asyncio.timeout(TIMEOUT_S):
                async for response in stream:
                    assert response.WhichOneof("payload") != "done"
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - killed < 1.0
        await eventually(lambda: bool(deaths), TIMEOUT_S, "the engine's death to be reported")
        assert isinstance(deaths[0], EngineDead)
        health = health_pb2_grpc.HealthStub(handle.channel)
        await eventually(lambda: not handle.server.is_serving, 5.0, "health to go NOT_SERVING")
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await handle.stop()


def _serve(tmp_path) -> tuple[subprocess.Popen, str, queue.Queue]:
    """`kakeya serve --engine-process on` on a unix socket; its JSON log records arrive on a queue."""
    socket_path = tmp_path / "kakeya.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "kakeya.runtime.server.cli", "serve", "--unix-socket", str(socket_path),
         "--log-format", "json", "--grace-s", "1", "--metrics-port", "-1", "--engine-process", "on"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    records: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stderr:
            if line.startswith("{"):
                records.put(json.loads(line))
        records.put(None)

    threading.Thread(target=read, daemon=True).start()
    return process, f"unix:{socket_path}", records


def _record(records: queue.Queue, event: str, timeout_s: float = LOAD_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        record = records.get(timeout=max(deadline - time.monotonic(), 0.001))
        assert record is not None, f"kakeya serve ended before logging {event}"
        if record["event"] == event:
            return record


def _gone(pid: int) -> bool:
    """No such process, or only its zombie left for whoever reaps it (it holds no memory)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def _wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_serve_exits_70_when_its_engine_process_is_killed(tmp_path):
    process, address, records = _serve(tmp_path)
    try:
        engine_pid = _record(records, "engine_process_started")["pid"]
        _record(records, "server_ready")
        with grpc.insecure_channel(address) as channel:
            stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
            sid = stub.CreateSession(pb.CreateSessionRequest(no_default_eos=True), timeout=30).session_id
            stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=[1, 2, 3]), timeout=30)
            stream = stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=5000), timeout=120)
            assert next(stream).WhichOneof("payload") in ("token_id", "tokens")
            os.kill(engine_pid, signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(grpc.RpcError) as failed:
                for response in stream:
                    assert response.WhichOneof("payload") != "done"
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - killed < 1.0
        assert process.wait(timeout=60) == 70
        assert _record(records, "engine_dead", 10)["level"] == "critical"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_engine_process_exits_when_its_front_is_killed(tmp_path):
    process, _, records = _serve(tmp_path)
    try:
        engine_pid = _record(records, "engine_process_started")["pid"]
        ready = _record(records, "engine_process_ready")
        assert ready["pid"] == engine_pid and ready["gc_frozen_objects"] > 10_000
        _record(records, "server_ready")
        assert not _gone(engine_pid)
        process.kill()
        process.wait(timeout=30)
        _wait_until(lambda: _gone(engine_pid), 10.0, "the engine process to exit with its front")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
