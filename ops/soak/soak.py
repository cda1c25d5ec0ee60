"""Soak runner: mixed session traffic against a running Kakeya runtime, then a one-line JSON report.

Start a runtime, then soak it (from the repository root):

    .venv/bin/kakeya serve --port 50051 &
    .venv/bin/python ops/soak/soak.py --address 127.0.0.1:50051 --sessions 8 --minutes 10 --pid $!

Each of --sessions workers owns one session at a time and loops until the time is up over a
weighted mix: append 1-8 tokens, generate 1-3 tokens (greedy or seeded sampling), a Generate
cancelled after its first token, GetSessionInfo, GetRuntimeInfo, and close-then-create (a session
is also replaced once its history passes --max-history). Every answer is checked against the
worker's model of its session's history; a status other than the expected one, or a history that
disagrees with the model, counts as an error. Every 100 requests it samples the server's RSS
(--pid: /proc/PID/status VmRSS, so the server must run on this machine) and the KV bytes in use
(GetRuntimeInfo). At the end every worker closes its session and the runner reads the KV bytes
again: with no other clients on the server they must be 0.

The report: requests, errors (and their kinds), rss_start_mb, rss_end_mb,
rss_slope_mb_per_1000_requests (least squares over the samples after the first quarter, the
warm-up), rss_floor_rise_mb_per_1000_requests (how far the lowest RSS rose from the first to the
second half of those samples: steadier than the slope over a short run; also in MiB as
rss_floor_rise_mb), kv_bytes_end and counters of what ran. The exit status is 1 when there were errors, when
KV bytes are still held at the end, or when the RSS slope is above --max-rss-slope.

Needs only the SDK install (grpcio, protobuf): `pip install kakeya` or the repository's .venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import grpc

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc

CALL_TIMEOUT_S = 60.0
SAMPLE_EVERY = 100  # requests between two RSS / KV samples
WARMUP_FRACTION = 0.25  # share of the samples left out of the RSS slope (allocator and cache warm-up)
CANCEL_SLACK = 4  # tokens a cancelled Generate may add after the one the client read
OPERATIONS = ("append", "generate", "cancel", "info", "runtime_info", "recycle")
WEIGHTS = (25, 30, 5, 25, 5, 10)


@dataclass(frozen=True)
class SoakConfig:
    sessions: int = 8
    seconds: float = 60.0
    seed: int = 1
    max_history: int = 192  # a session is closed and replaced past this many tokens
    min_requests: int = 0  # keep going past `seconds` until this many requests were made
    warmup_fraction: float = WARMUP_FRACTION  # samples left out of the RSS slope
    metadata: tuple[tuple[str, str], ...] = ()  # e.g. (("authorization", "Bearer KEY"),)


def read_rss_mb(pid: int) -> float | None:
    """Resident set size of a local process in MiB (None where /proc is not readable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def slope_per_1000(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of MiB over requests, per 1,000 requests; None with fewer than 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var_x = sum((x - mean_x) ** 2 for x, _ in points)
    if var_x == 0:
        return None
    cov = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return cov / var_x * 1000


def floor_rise_mb(points: list[tuple[int, float]]) -> float | None:
    """How far the RSS floor rose, in MiB: the lowest sample of the second half of `points` against
    the lowest of the first. Freed memory goes back to the OS in bursts, so RSS saw-tooths by tens
    of MiB, and over a short run the least-squares slope follows the teeth; a leak lifts the floor.
    None under 4 points."""
    if len(points) < 4:
        return None
    first, second = points[:len(points) // 2], points[len(points) // 2:]
    return min(y for _, y in second) - min(y for _, y in first)


def floor_rise_per_1000(points: list[tuple[int, float]]) -> float | None:
    """floor_rise_mb per 1,000 requests, over the requests between the halves' means."""
    rise = floor_rise_mb(points)
    if rise is None:
        return None
    first, second = points[:len(points) // 2], points[len(points) // 2:]
    span = sum(x for x, _ in second) / len(second) - sum(x for x, _ in first) / len(first)
    return rise / span * 1000


class _Mismatch(Exception):
    """An answer that disagrees with the worker's model of its session."""


class Soak:
    """Drives the traffic through a RuntimeService stub (grpc.aio) and collects the report."""

    def __init__(self, stub: runtime_pb2_grpc.RuntimeServiceStub, config: SoakConfig,
                 rss_mb: Callable[[], float | None] = lambda: None) -> None:
        self.stub = stub
        self.config = config
        self.rss_mb = rss_mb
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.samples: list[dict] = []
        self.vocab_size = 0
        self._sample_due = asyncio.Event()

    # --- calls ----------------------------------------------------------------------------

    def _options(self) -> dict:
        return {"timeout": CALL_TIMEOUT_S, "metadata": self.config.metadata or None}

    def _count(self) -> None:
        self.requests += 1
        if self.requests % SAMPLE_EVERY == 0:
            self._sample_due.set()

    async def _unary(self, method, request):
        """The reply, or None after recording an unexpected status."""
        try:
            return await asyncio.wait_for(method(request, **self._options()), CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            self.errors[f"status:{exc.code().name}"] += 1
            return None
        except asyncio.TimeoutError:
            self.errors["timeout"] += 1
            return None
        finally:
            self._count()

    async def _generate(self, session_id: str, max_tokens: int, sampling: dict):
        """(tokens, done) of a whole Generate, or None after recording an error."""
        tokens, done = [], None

        async def consume() -> None:
            nonlocal done
            call = self.stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=max_tokens, **sampling),
                                      **self._options())
            async for response in call:
                if response.WhichOneof("payload") == "token_id":
                    tokens.append(response.token_id)
                elif response.WhichOneof("payload") == "done":
                    done = response.done
        try:
            await asyncio.wait_for(consume(), CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            self.errors[f"status:{exc.code().name}"] += 1
            return None
        except asyncio.TimeoutError:
            self.errors["timeout"] += 1
            return None
        finally:
            self._count()
        return tokens, done

    async def _generate_cancelled(self, session_id: str) -> bool:
        """Starts a long Generate and cancels it after its first token; True if that went as expected."""
        call = self.stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=32), **self._options())
        try:
            first = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
            call.cancel()
            code = await asyncio.wait_for(call.code(), CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            self.errors[f"status:{exc.code().name}"] += 1
            return False
        except asyncio.TimeoutError:
            self.errors["timeout"] += 1
            return False
        finally:
            self._count()
        if first is grpc.aio.EOF or first.WhichOneof("payload") != "token_id":
            raise _Mismatch("cancel: the first event was not a token")
        if code != grpc.StatusCode.CANCELLED:
            self.errors[f"status:{code.name}"] += 1
            return False
        return True

    # --- one worker -------------------------------------------------------------------------

    async def _open(self) -> str | None:
        reply = await self._unary(self.stub.CreateSession, pb.CreateSessionRequest(client_label="soak", no_default_eos=True))
        self.counts["sessions_opened"] += reply is not None
        return None if reply is None else reply.session_id

    async def _close(self, session_id: str, history: int) -> None:
        reply = await self._unary(self.stub.CloseSession, pb.CloseSessionRequest(session_id=session_id))
        if reply is not None and reply.final_history_length != history:
            raise _Mismatch(f"close: final length {reply.final_history_length}, model {history}")

    async def _append(self, session_id: str, history: int, rng: random.Random, kept_max: int = 0) -> int | None:
        """Appends 1-8 tokens; returns the new history length. With kept_max, tokens of a cancelled
        Generate (1..kept_max, queued ahead of this append) may join first."""
        tokens = [rng.randrange(self.vocab_size) for _ in range(rng.randint(1, 8))]
        reply = await self._unary(self.stub.AppendTokens,
                                  pb.AppendTokensRequest(session_id=session_id, token_ids=tokens))
        if reply is None:
            return None
        kept = reply.history_length - history - len(tokens)
        if (kept_max and not 1 <= kept <= kept_max) or (not kept_max and kept != 0):
            raise _Mismatch(f"append: history {reply.history_length}, model {history} + {len(tokens)}"
                            + (f" + 1..{kept_max} cancelled" if kept_max else ""))
        return reply.history_length

    async def _step(self, op: str, session_id: str, history: int, rng: random.Random) -> int | None:
        """Runs one operation; returns the session's new history length, or None if it is gone."""
        if op == "append" or (op in ("generate", "cancel") and history == 0):
            return await self._append(session_id, history, rng)
        if op == "generate":
            max_tokens = rng.randint(1, 3)
            sampling = {} if rng.random() < 0.7 else {"temperature": 0.8, "top_p": 0.95, "top_k": 40,
                                                       "seed": rng.getrandbits(64)}
            result = await self._generate(session_id, max_tokens, sampling)
            if result is None:
                return None
            tokens, done = result
            # Sessions have no EOS ids: exactly max_tokens tokens, then one done.
            if len(tokens) != max_tokens or done is None or done.generated_token_count != max_tokens:
                raise _Mismatch(f"generate: {len(tokens)} tokens for max_tokens {max_tokens}")
            self.counts["generated_tokens"] += max_tokens
            return history + max_tokens
        if op == "cancel":
            if not await self._generate_cancelled(session_id):
                return None
            self.counts["cancels"] += 1
            # The next message on the session runs after the cancelled Generate ended, so an
            # append tells how many tokens it kept.
            return await self._append(session_id, history, rng, kept_max=1 + CANCEL_SLACK)
        if op == "info":
            reply = await self._unary(self.stub.GetSessionInfo, pb.GetSessionInfoRequest(session_id=session_id))
            if reply is None:
                return None
            if reply.history_length != history or reply.kv_resident_tokens + reply.pending_tokens != history:
                raise _Mismatch(f"info: history {reply.history_length}, model {history}")
            return history
        if op == "runtime_info":
            reply = await self._unary(self.stub.GetRuntimeInfo, pb.GetRuntimeInfoRequest())
            return None if reply is None else history
        raise ValueError(op)

    async def _worker(self, index: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(self.config.seed * 7919 + index)
        session_id, history = None, 0
        try:
            while loop.time() < deadline or self.requests < self.config.min_requests:
                if session_id is None:
                    session_id, history = await self._open(), 0
                    if session_id is None:
                        return  # the error is recorded; a worker that cannot open a session stops
                    continue
                op = rng.choices(OPERATIONS, WEIGHTS)[0]
                self.counts[op] += 1
                try:
                    if op == "recycle" or history > self.config.max_history:
                        await self._close(session_id, history)
                        session_id = None
                        continue
                    new_history = await self._step(op, session_id, history, rng)
                except _Mismatch as exc:
                    self.errors[f"mismatch:{str(exc).split(':')[0]}"] += 1
                    new_history = None
                if new_history is None:  # the model is lost: read the truth back
                    reply = await self._unary(self.stub.GetSessionInfo,
                                              pb.GetSessionInfoRequest(session_id=session_id))
                    if reply is None:
                        session_id = None
                        continue
                    new_history = reply.history_length
                history = new_history
        finally:
            if session_id is not None:
                try:
                    await self._close(session_id, history)
                except _Mismatch:
                    self.errors["mismatch:close"] += 1

    # --- the run ----------------------------------------------------------------------------

    async def _sample(self) -> None:
        reply = await self._runtime_info()
        self.samples.append({"requests": self.requests, "rss_mb": self.rss_mb(),
                             "kv_bytes": None if reply is None else reply.kv_used_bytes})

    async def _runtime_info(self):
        """GetRuntimeInfo outside the traffic (not counted as a request)."""
        try:
            return await asyncio.wait_for(self.stub.GetRuntimeInfo(pb.GetRuntimeInfoRequest(), **self._options()),
                                          CALL_TIMEOUT_S)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
            self.errors[f"probe:{type(exc).__name__}"] += 1
            return None

    async def _sampler(self) -> None:
        while True:
            await self._sample_due.wait()
            self._sample_due.clear()
            await self._sample()

    async def run(self) -> dict:
        started = time.monotonic()
        info = await self._runtime_info()
        if info is None:
            raise RuntimeError("GetRuntimeInfo failed: is a runtime serving at this address?")
        self.vocab_size = info.vocab_size
        await self._sample()
        sampler = asyncio.ensure_future(self._sampler())
        deadline = asyncio.get_running_loop().time() + self.config.seconds
        try:
            await asyncio.gather(*(self._worker(i, deadline) for i in range(self.config.sessions)))
        finally:
            sampler.cancel()
            await asyncio.wait({sampler})
        await self._sample()
        return self.summary(time.monotonic() - started)

    def summary(self, duration_s: float) -> dict:
        rss = [(s["requests"], s["rss_mb"]) for s in self.samples if s["rss_mb"] is not None]
        kv = [s["kv_bytes"] for s in self.samples if s["kv_bytes"] is not None]
        steady = rss[int(len(rss) * self.config.warmup_fraction):]
        slope, floor_rise, floor_rise_abs = slope_per_1000(steady), floor_rise_per_1000(steady), floor_rise_mb(steady)
        end = self.samples[-1] if self.samples else {}
        return {
            "requests": self.requests,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "duration_s": round(duration_s, 1),
            "sessions": self.config.sessions,
            "operations": {op: self.counts[op] for op in OPERATIONS},
            "sessions_opened": self.counts["sessions_opened"],
            "generated_tokens": self.counts["generated_tokens"],
            "cancels": self.counts["cancels"],
            "samples": len(self.samples),
            "rss_start_mb": round(rss[0][1], 1) if rss else None,
            "rss_end_mb": round(rss[-1][1], 1) if rss else None,
            "rss_max_mb": round(max(y for _, y in rss), 1) if rss else None,
            "rss_slope_mb_per_1000_requests": None if slope is None else round(slope, 3),
            "rss_floor_rise_mb_per_1000_requests": None if floor_rise is None else round(floor_rise, 3),
            "rss_floor_rise_mb": None if floor_rise_abs is None else round(floor_rise_abs, 1),
            "kv_bytes_max": max(kv) if kv else None,
            "kv_bytes_end": end.get("kv_bytes"),
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port or unix:PATH of the runtime")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions (one worker each)")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to drive traffic")
    parser.add_argument("--pid", type=int, default=None, help="the server's process id, to sample its RSS")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-history", type=int, default=192, help="replace a session past this many tokens")
    parser.add_argument("--api-key", default=None, help="sent as 'authorization: Bearer KEY'")
    parser.add_argument("--max-rss-slope", type=float, default=None,
                        help="fail when the RSS slope (MiB per 1,000 requests) is above this")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.minutes <= 0:
        parser.error("--sessions must be >= 1 and --minutes > 0")
    return args


async def main_async(args: argparse.Namespace) -> dict:
    config = SoakConfig(sessions=args.sessions, seconds=args.minutes * 60, seed=args.seed,
                        max_history=args.max_history,
                        metadata=(("authorization", f"Bearer {args.api_key}"),) if args.api_key else ())
    rss = (lambda: read_rss_mb(args.pid)) if args.pid else (lambda: None)
    async with grpc.aio.insecure_channel(args.address) as channel:
        return await Soak(runtime_pb2_grpc.RuntimeServiceStub(channel), config, rss).run()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(main_async(args))
    print(json.dumps(summary, sort_keys=True), flush=True)
    slope = summary["rss_slope_mb_per_1000_requests"]
    failed = (summary["errors"] > 0 or summary["kv_bytes_end"] != 0
              or (args.max_rss_slope is not None and slope is not None and slope > args.max_rss_slope))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
