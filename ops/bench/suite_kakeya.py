"""The kakeya side of the benchmark suite: a `kakeya serve` child process on a unix socket, the
workloads driven through the SDK, and a sampler of the server's memory over the whole run."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator

from kakeya import Client, KakeyaError, SyncClient
from kakeya.client import DEFAULT_TOKENS_PER_MESSAGE

from suite_report import stream_figures

READY_TIMEOUT_S = 900  # a cold CUDA start plus loading a model from disk
RPC_TIMEOUT_S = 600
PROGRESS_EVERY = 25  # long session: a progress line on stderr every this many turns


@dataclasses.dataclass(frozen=True, slots=True)
class Server:
    address: str
    pid: int
    metrics_url: str


@contextlib.contextmanager
def served(model: str, device: str, dtype: str, max_sessions: int, extra_args: list[str]) -> Iterator[Server]:
    """`kakeya serve` as users run it, started through `-m` so it needs no console script; flags in
    `extra_args` come last and so override the suite's own."""
    with tempfile.TemporaryDirectory(prefix="kakeya-bench-") as tmp:
        socket_path = os.path.join(tmp, "kakeya.sock")
        port = free_port()
        command = [sys.executable, "-m", "kakeya.runtime.server.cli", "serve", "--unix-socket", socket_path,
                   "--model", model, "--device", device, "--dtype", dtype, "--log-level", "warning",
                   "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
                   "--max-sessions", str(max_sessions), *extra_args]
        process = subprocess.Popen(command)
        server = Server(f"unix:{socket_path}", process.pid, f"http://127.0.0.1:{port}/metrics")
        try:
            wait_ready(server.address, process)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def counter_values(server: Server, name: str) -> dict[str, float]:
    """Every sample of a counter from the server's /metrics, keyed by its label text ("" when it has
    none); {} when the endpoint does not answer."""
    try:
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            values[key[len(name):]] = float(value)
    return values


def wait_ready(address: str, process: subprocess.Popen) -> None:
    """GetRuntimeInfo answers UNAVAILABLE until the model is loaded, so its first answer means ready."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kakeya serve exited with code {process.returncode} before it was ready")
        with contextlib.suppress(KakeyaError):
            with SyncClient(address, timeout_s=5) as client:
                client.runtime_info()
                return
        time.sleep(1)
    raise TimeoutError(f"kakeya serve was not ready within {READY_TIMEOUT_S} s")


def runtime_snapshot(address: str) -> dict:
    with SyncClient(address, timeout_s=30) as client:
        info = dataclasses.asdict(client.runtime_info())
    return {key: list(value) if isinstance(value, tuple) else value for key, value in info.items()}


def rss_bytes(pid: int) -> int | None:
    """Resident set size from /proc (Linux), else psutil when installed, else None."""
    status = pathlib.Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process(pid).memory_info().rss


def tree_rss_bytes(pid: int) -> int | None:
    """RSS of a process and its children (the server and its engine process, where it has one)."""
    total = rss_bytes(pid)
    if total is None:
        return None
    for children in pathlib.Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            total += rss_bytes(int(child)) or 0
    return total


class MemorySampler:
    """A thread that records, every `interval_s`, the server's RSS and KV bytes in use, this process's
    RSS and (on CUDA) its allocated device memory, tagged with the phase the suite is in. A thread,
    because the baselines block this process's event loop for seconds at a time."""

    def __init__(self, server: Server, interval_s: float, cuda_device=None) -> None:
        self.phase = "start"
        self.samples: list[dict] = []
        self._server = server
        self._interval_s = interval_s
        self._cuda_device = cuda_device
        self._started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with SyncClient(self._server.address, timeout_s=10) as client:
            while True:
                self.sample(client)
                if self._stop.wait(self._interval_s):
                    self.sample(client)
                    return

    def sample(self, client: SyncClient) -> None:
        row = {"t_s": round(time.perf_counter() - self._started, 3), "phase": self.phase,
               "server_rss_bytes": tree_rss_bytes(self._server.pid), "bench_rss_bytes": rss_bytes(os.getpid())}
        try:
            info = client.runtime_info()
            row["kv_used_bytes"] = info.kv_used_bytes
            row["active_sessions"] = info.active_sessions
        except KakeyaError as exc:
            row["kv_error"] = type(exc).__name__
        if self._cuda_device is not None:
            import torch

            row["bench_cuda_allocated_bytes"] = torch.cuda.memory_allocated(self._cuda_device)
            row["gpu_busy_pct"] = gpu_busy_pct(self._cuda_device.index or 0)
        self.samples.append(row)


def gpu_busy_pct(index: int) -> float | None:
    """nvidia-smi's utilization.gpu: the share of its last sample period in which a kernel ran; None
    where nvidia-smi is missing or fails."""
    try:
        done = subprocess.run(["nvidia-smi", "-i", str(index), "--query-gpu=utilization.gpu",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
        return float(done.stdout.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


async def _concurrent_streams(address: str, prompts: list[list[int]], new_tokens: int, per_message: int,
                              min_per_message: int = 1) -> dict:
    async with Client(address, timeout_s=RPC_TIMEOUT_S, max_tokens_per_message=per_message) as client:
        # No EOS ids: every stream runs to exactly new_tokens. Appends before the clock starts: prefill
        # is lazy, so the timed Generate does it and TTFT includes it.
        sessions = [await client.create_session(initial_tokens=prompt, default_eos=False) for prompt in prompts]
        stamps: list[list[float]] = [[] for _ in sessions]

        async def read(session, sink: list[float]) -> None:
            async for _ in session.generate(new_tokens, timeout_s=RPC_TIMEOUT_S, min_tokens_per_message=min_per_message):
                sink.append(time.perf_counter())

        try:
            started = time.perf_counter()
            await asyncio.gather(*(read(session, sink) for session, sink in zip(sessions, stamps)))
        finally:
            await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)
    short = [len(sink) for sink in stamps if len(sink) != new_tokens]
    if short:
        raise RuntimeError(f"streams ended early: {short} tokens instead of {new_tokens}")
    return stream_figures(started, stamps)


def multi_session(address: str, prompts: list[list[int]], new_tokens: int, warmup_tokens: int,
                  per_message: int = DEFAULT_TOKENS_PER_MESSAGE, min_per_message: int = 1) -> dict:
    """N concurrent sessions: a warm-up of the same N (so batch-size dependent setup such as graph
    capture is done), then the timed run.

    The client runs in a fresh process of its own, as an application's would. At 64 sessions it
    reads ~15k messages a second on one core; in the suite's own process, which by then also holds
    the baselines' compiled models and caches, the same client read measurably slower.
    per_message: the client's max_tokens_per_message (1: one message a token); min_per_message:
    each generation's min_tokens_per_message (1: a message as soon as a token is ready)."""
    command = [sys.executable, os.path.abspath(__file__), "multi", address, str(new_tokens), str(warmup_tokens),
               str(per_message), str(min_per_message)]
    done = subprocess.run(command, input=json.dumps(prompts), capture_output=True, text=True, timeout=2 * RPC_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"the multi-session client failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def _multi_session_here(address: str, prompts: list[list[int]], new_tokens: int, warmup_tokens: int,
                        per_message: int, min_per_message: int) -> dict:
    asyncio.run(_concurrent_streams(address, prompts, warmup_tokens, per_message, min_per_message))
    return asyncio.run(_concurrent_streams(address, prompts, new_tokens, per_message, min_per_message))


async def _turns(address: str, chunks: list[list[int]], generate_tokens: int, progress_every: int) -> list[float]:
    latencies = []
    async with Client(address, timeout_s=RPC_TIMEOUT_S) as client:
        async with client.session(default_eos=False) as session:  # every turn runs to generate_tokens
            for turn, chunk in enumerate(chunks, start=1):
                started = time.perf_counter()
                await session.append(chunk)
                tokens = await session.generate(generate_tokens, timeout_s=RPC_TIMEOUT_S).collect()
                latencies.append(time.perf_counter() - started)
                if len(tokens) != generate_tokens:
                    raise RuntimeError(f"turn {turn} generated {len(tokens)} tokens instead of {generate_tokens}")
                if progress_every and turn % progress_every == 0:
                    print(f"[suite] long kakeya: turn {turn}/{len(chunks)}", file=sys.stderr, flush=True)
    return latencies


def _long_session_here(address: str, chunks: list[list[int]], generate_tokens: int) -> list[float]:
    asyncio.run(_turns(address, chunks[:2], generate_tokens, 0))
    return asyncio.run(_turns(address, chunks, generate_tokens, PROGRESS_EVERY))


def long_session(address: str, chunks: list[list[int]], generate_tokens: int) -> list[float]:
    """One session, one turn per chunk (append it, generate), timed per turn from the client: the
    append RPC plus the whole Generate stream. Two untimed turns on a session of their own warm up.

    Like multi_session, the client runs in a fresh process, as an application's would: in the
    suite's own it shared the interpreter lock with the memory sampler's thread, and its collector
    with the baseline's model and caches."""
    command = [sys.executable, os.path.abspath(__file__), "long", address, str(generate_tokens)]
    done = subprocess.run(command, input=json.dumps(chunks), stdout=subprocess.PIPE, text=True,
                          timeout=2 * RPC_TIMEOUT_S + 60 * len(chunks))
    if done.returncode != 0:
        raise RuntimeError(f"the long-session client failed ({done.returncode}); its stderr is above")
    return json.loads(done.stdout)


if __name__ == "__main__":
    # The client processes: `multi ADDRESS NEW WARMUP PER_MESSAGE MIN_PER_MESSAGE` (see multi_session) or `long ADDRESS GENERATE`
    # (see long_session); their input as JSON on stdin, figures as JSON on stdout.
    _inputs = json.load(sys.stdin)
    if sys.argv[1] == "long":
        print(json.dumps(_long_session_here(sys.argv[2], _inputs, int(sys.argv[3]))))
    else:
        print(json.dumps(_multi_session_here(sys.argv[2], _inputs, int(sys.argv[3]), int(sys.argv[4]),
                                             int(sys.argv[5]), int(sys.argv[6]))))
