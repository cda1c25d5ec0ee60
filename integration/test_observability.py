"""Metrics scraped by a real Prometheus, the exposition checked by promtool, and readiness on stalls."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import urllib.parse
import urllib.request

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .harness import TIMEOUT_S, append, close, create, eventually, generate, start_server

PROMPT = list(range(500, 540))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        return response.read().decode()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: .ci/run installs the Debian package 'prometheus'")
    return path


async def _traffic(stub, sessions: int) -> None:
    async def one() -> None:
        session_id = await create(stub)
        await append(stub, session_id, PROMPT)
        await generate(stub, session_id, 16)
        await close(stub, session_id)

    await asyncio.gather(*(one() for _ in range(sessions)))


@pytest.fixture
async def metrics_server(loaded_model):
    handle = await start_server(loaded_model, server={"metrics_port": 0})
    yield handle
    await handle.stop()


async def test_promtool_accepts_the_exposition(metrics_server, tmp_path):
    await _traffic(metrics_server.stub, 2)
    text = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_server.server.metrics_port}/metrics")
    for name in ("kakeya_session_active", "kakeya_session_total", "kakeya_session_kv_live_bytes",
                 "kakeya_session_history_tokens_bucket", "kakeya_generate_prefill_tokens_bucket",
                 "kakeya_generate_prefill_duration_seconds_bucket", "kakeya_scheduler_batch_sessions_bucket",
                 "kakeya_request_time_to_first_token_seconds_bucket", "kakeya_kv_usage_ratio"):
        assert name in text, name
    result = subprocess.run([_binary("promtool"), "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_real_prometheus_sees_the_series_move(metrics_server, tmp_path):
    target = f"127.0.0.1:{metrics_server.server.metrics_port}"
    web = f"127.0.0.1:{_free_port()}"
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        f"scrape_configs:\n  - job_name: kakeya\n    static_configs:\n      - targets: ['{target}']\n")
    process = subprocess.Popen(
        [_binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address={web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(expr: str) -> float | None:
        try:
            body = json.loads(_get(f"http://{web}/api/v1/query?query={urllib.parse.quote(expr)}"))
        except OSError:
            return None  # Prometheus is still starting
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    async def wait_for(expr: str, predicate, what: str) -> float:
        deadline = asyncio.get_running_loop().time() + TIMEOUT_S
        while True:
            value = await asyncio.to_thread(query, expr)
            if value is not None and predicate(value):
                return value
            assert asyncio.get_running_loop().time() < deadline, f"Prometheus never saw {what} (last {value})"
            await asyncio.sleep(0.5)

    try:
        await wait_for('up{job="kakeya"}', lambda v: v == 1, "the runtime as a healthy target")
        await _traffic(metrics_server.stub, 6)
        await wait_for('kakeya_session_total{outcome="closed"}', lambda v: v >= 6, "6 closed sessions")
        await wait_for("kakeya_generation_tokens_total", lambda v: v >= 6 * 16, "96 generated tokens")
        await wait_for("kakeya_prompt_tokens_total", lambda v: v >= 6 * len(PROMPT), "the prefilled prompts")
        mean = await wait_for("kakeya_scheduler_batch_sessions_sum / kakeya_scheduler_batch_sessions_count",
                              lambda v: v > 1, "more than one session per forward")
        assert mean > 1
        assert await wait_for("kakeya_session_active", lambda v: v == 0, "no open sessions") == 0
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_health_follows_a_stalled_scheduler(loaded_model):
    """Fault injection: the model thread blocks; health flips to NOT_SERVING and back."""
    handle = await start_server(loaded_model, server={"stall_timeout_s": 0.3})
    health = health_pb2_grpc.HealthStub(handle.channel)

    async def status() -> int:
        return (await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)).status

    try:
        assert await status() == health_pb2.HealthCheckResponse.SERVING
        gate = handle.runtime.runner.fault_gate = threading.Event()
        session_id = await create(handle.stub)
        await append(handle.stub, session_id, PROMPT)
        pending = asyncio.ensure_future(generate(handle.stub, session_id, 4))
        await eventually(lambda: not handle.server.is_serving, TIMEOUT_S, "NOT_SERVING while stalled")
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        gate.set()
        assert len((await asyncio.wait_for(pending, TIMEOUT_S)).tokens) == 4
        await eventually(lambda: handle.server.is_serving, TIMEOUT_S, "SERVING once steps resume")
        assert await status() == health_pb2.HealthCheckResponse.SERVING
        await close(handle.stub, session_id)
    finally:
        handle.runtime.runner.fault_gate = None
        await handle.stop()
