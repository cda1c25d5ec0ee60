"""The soak's traffic: workers that loop over a weighted mix of session calls, check every answer
against a model of their session's history, and sample RSS and KV bytes for the report. The
command line is soak.py's.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc
from soak_calls import Mismatch, SoakCalls
from soak_rss import floor_rise_mb, floor_rise_per_1000, slope_per_1000

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


class Soak:
    """Drives the traffic through a RuntimeService stub (grpc.aio) and collects the report."""

    def __init__(self, stub: runtime_pb2_grpc.RuntimeServiceStub, config: SoakConfig,
                 rss_mb: Callable[[], float | None] = lambda: None) -> None:
        self.stub = stub
        self.config = config
        self.rss_mb = rss_mb
        self.calls = SoakCalls(stub, config.metadata)
        self.counts: Counter[str] = Counter()
        self.samples: list[dict] = []
        self.vocab_size = 0

    # --- one worker -------------------------------------------------------------------------

    async def _open(self) -> str | None:
        reply = await self.calls.unary(self.stub.CreateSession, pb.CreateSessionRequest(client_label="soak", no_default_eos=True))
        self.counts["sessions_opened"] += reply is not None
        return None if reply is None else reply.session_id

    async def _close(self, session_id: str, history: int) -> None:
        reply = await self.calls.unary(self.stub.CloseSession, pb.CloseSessionRequest(session_id=session_id))
        if reply is not None and reply.final_history_length != history:
            raise Mismatch(f"close: final length {reply.final_history_length}, model {history}")

    async def _append(self, session_id: str, history: int, rng: random.Random, kept_max: int = 0) -> int | None:
        """Appends 1-8 tokens; returns the new history length. With kept_max, tokens of a cancelled
        Generate (1..kept_max, queued ahead of this append) may join first."""
        tokens = [rng.randrange(self.vocab_size) for _ in range(rng.randint(1, 8))]
        reply = await self.calls.unary(self.stub.AppendTokens,
                                  pb.AppendTokensRequest(session_id=session_id, token_ids=tokens))
        if reply is None:
            return None
        kept = reply.history_length - history - len(tokens)
        if (kept_max and not 1 <= kept <= kept_max) or (not kept_max and kept != 0):
            raise Mismatch(f"append: history {reply.history_length}, model {history} + {len(tokens)}"
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
            result = await self.calls.generate(session_id, max_tokens, sampling)
            if result is None:
                return None
            tokens, done = result
            # Sessions have no EOS ids: exactly max_tokens tokens, then one done.
            if len(tokens) != max_tokens or done is None or done.generated_token_count != max_tokens:
                raise Mismatch(f"generate: {len(tokens)} tokens for max_tokens {max_tokens}")
            self.counts["generated_tokens"] += max_tokens
            return history + max_tokens
        if op == "cancel":
            if not await self.calls.generate_cancelled(session_id):
                return None
            self.counts["cancels"] += 1
            # The next message on the session runs after the cancelled Generate ended, so an
            # append tells how many tokens it kept.
            return await self._append(session_id, history, rng, kept_max=1 + CANCEL_SLACK)
        if op == "info":
            reply = await self.calls.unary(self.stub.GetSessionInfo, pb.GetSessionInfoRequest(session_id=session_id))
            if reply is None:
                return None
            if reply.history_length != history or reply.kv_resident_tokens + reply.pending_tokens != history:
                raise Mismatch(f"info: history {reply.history_length}, model {history}")
            return history
        if op == "runtime_info":
            reply = await self.calls.unary(self.stub.GetRuntimeInfo, pb.GetRuntimeInfoRequest())
            return None if reply is None else history
        raise ValueError(op)

    async def _worker(self, index: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(self.config.seed * 7919 + index)
        session_id, history = None, 0
        try:
            while loop.time() < deadline or self.calls.requests < self.config.min_requests:
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
                except Mismatch as exc:
                    self.calls.errors[f"mismatch:{str(exc).split(':')[0]}"] += 1
                    new_history = None
                if new_history is None:  # the model is lost: read the truth back
                    reply = await self.calls.unary(self.stub.GetSessionInfo,
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
                except Mismatch:
                    self.calls.errors["mismatch:close"] += 1

    # --- the run ----------------------------------------------------------------------------

    async def _sample(self) -> None:
        reply = await self.calls.runtime_info()
        self.samples.append({"requests": self.calls.requests, "rss_mb": self.rss_mb(),
                             "kv_bytes": None if reply is None else reply.kv_used_bytes})

    async def _sampler(self) -> None:
        while True:
            await self.calls.sample_due.wait()
            self.calls.sample_due.clear()
            await self._sample()

    async def run(self) -> dict:
        started = time.monotonic()
        info = await self.calls.runtime_info()
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
            "requests": self.calls.requests,
            "errors": sum(self.calls.errors.values()),
            "error_kinds": dict(self.calls.errors),
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
