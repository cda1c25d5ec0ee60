"""Protocol fuzz: over 10,000 malformed or extreme requests, sent 200 at a time, against a real runtime.

Every request carries its own oracle: the set of status codes docs/service.md's table allows for it.
Requests the servicer handles must get exactly such a code (so never UNKNOWN or INTERNAL), and the
few valid ones must really work. Requests against live sessions are mostly cheap ones (appends
with bad ids, generates with bad parameters); a valid Generate runs the model, so there is one
every 4th batch, for at most 2 tokens with extreme but valid sampling. It runs on in the
background while the flood goes on, and requests aimed at its session queue behind it (in the
background too). That session's bounded mailbox may fill: the actor then answers
RESOURCE_EXHAUSTED "mailbox is full" at once (actors/base.py), which is accepted and counted for
requests on live sessions only; a refused valid request adds nothing to the model of the history.
Random bytes on the wire are sent too:

- bytes that parse as the method's request message reach the servicer and are judged like any
  other request;
- bytes that do not parse reach the servicer as a malformed request (runtime/service_handlers.py)
  and get INVALID_ARGUMENT (the regression test at the end checks it); a message over the
  server's 16 MiB limit gets RESOURCE_EXHAUSTED from grpc itself. These are recorded and
  reported, and the server must stay healthy.

Afterwards: the server still serves a normal create/append/generate/close, health is SERVING,
every live session's history equals the model of it, and after closing every session the fuzz
created nothing leaks (registry empty, KV pool empty, scheduler idle, no session evicted).
The random seed is fixed; KAKEYA_SOAK_MINUTES=N sends N times as many requests.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kakeya.proto.v1 import runtime_pb2 as pb

from .harness import TIMEOUT_S, append, close, create, eventually, generate, info, start_server, status_of

SEED = 20_261_126
BATCH = 200
SOAK_MINUTES = float(os.environ.get("KAKEYA_SOAK_MINUTES") or 0)
MIN_REQUESTS = 10_000 * max(1, round(SOAK_MINUTES))
CALL_TIMEOUT_S = 60.0
LIVE_PROMPT = [1, 9690, 198, 2683, 359, 253]
NUM_LIVE, NUM_EMPTY = 8, 2
SERVICE = "/kakeya.v1.RuntimeService/"
REQUEST_TYPES = {
    "CreateSession": pb.CreateSessionRequest,
    "AppendTokens": pb.AppendTokensRequest,
    "GetSessionInfo": pb.GetSessionInfoRequest,
    "Generate": pb.GenerateRequest,
}

OK, INVALID, NOT_FOUND = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

EXTREME_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, -1.0, -1e-45, 1e-45, 1e-39, 1.1754943508222875e-38,
                  3.4028234663852886e38, 1e39, 0.5, 1.0, 1.0000001, 1.5, 2.0, 1e10]
VALID_TEMPERATURES = [0.0, -0.0, 1e-45, 1e-30, 0.7, 3.4028234663852886e38]
VALID_TOP_P = [1e-45, 1e-30, 0.5, 0.9999999, 1.0]
SPECIAL_IDS = ["", " ", "\x00", "\n", "\t\r", "../../etc/passwd", "'; DROP TABLE sessions; --", "%s%n%x",
               "${jndi:ldap://x/a}", "\u202e" + "0" * 31, "\ufeff", "null", "None", "0" * 32, "f" * 32,
               "😀" * 8, "\U0010ffff", "a" * 31, "a" * 33]


def _floats_ok(request: pb.GenerateRequest) -> bool:
    """The servicer's sampling check, on the float32 values the server will read."""
    if request.HasField("temperature"):
        t = request.temperature
        if math.isnan(t) or math.isinf(t) or t < 0:
            return False
    if request.HasField("top_p"):
        p = request.top_p
        if math.isnan(p) or not 0 < p <= 1:
            return False
    return True


@dataclass
class Live:
    """A session the fuzz keeps open; its history only grows, by the fuzz's rare valid requests."""

    session_id: str
    start: int  # history length before the fuzz: a lower bound for every later moment
    added: int = 0  # tokens the valid requests added (appended or generated)


@dataclass
class Probe:
    category: str
    send: Callable[[], Awaitable[tuple[grpc.StatusCode, Any]]]
    expected: frozenset
    servicer: bool = True  # False: grpc answers without calling the servicer (undecodable or oversized)
    on_ok: Callable[[Any], None] | None = None
    session_id: str | None = None  # the live session it queues on, if any
    adds: tuple[Live, int] | None = None  # a valid request: the tokens it adds to a live session


@dataclass
class Tally:
    requests: int = 0
    by_code: Counter = field(default_factory=Counter)
    by_category: Counter = field(default_factory=Counter)
    wire_codes: Counter = field(default_factory=Counter)  # answers grpc gave without the servicer
    servicer_unknown: int = 0
    servicer_internal: int = 0
    unexpected: list = field(default_factory=list)
    created: int = 0
    valid_generates: int = 0
    mailbox_full: int = 0  # RESOURCE_EXHAUSTED "mailbox is full" on a live session flooded behind a Generate
    behind_generate: int = 0  # requests that reached a live session while a Generate ran there


class Fuzzer:
    def __init__(self, handle, rng: random.Random) -> None:
        self.handle = handle
        self.stub = handle.stub
        self.channel = handle.channel
        self.rng = rng
        runtime = handle.runtime
        self.vocab = runtime.loaded.vocab_size
        self.max_history = runtime.rules.max_history_tokens
        self.max_generate = runtime.config.limits.max_generate_tokens
        self.max_append = runtime.config.limits.max_append_tokens
        self.live: list[Live] = []
        self.empty: list[str] = []
        self.created: list[str] = []  # sessions the fuzz's CreateSession requests opened, closed per batch
        self.gone: list[str] = []  # closed ids, probed later
        self.tally = Tally()
        self.batches = 0
        self.busy: set[str] = set()  # live sessions with a valid Generate in flight
        self.background: set[asyncio.Task] = set()

    # --- random values ----------------------------------------------------------------------

    def _text(self, length: int) -> str:
        r = self.rng
        pick = (lambda: r.randint(0x20, 0x7E), lambda: r.randint(0xA0, 0xD7FF), lambda: r.randint(0xE000, 0xFFFD),
                lambda: r.randint(0x10000, 0x10FFFF), lambda: r.randint(0, 0x1F))
        return "".join(chr(r.choice(pick)()) for _ in range(length))

    def _unknown_id(self) -> str:
        """An id no session has: empty, special, random, unicode, up to 20,000 characters, near misses, closed."""
        r = self.rng
        kind = r.randrange(7)
        if kind == 0:
            return r.choice(SPECIAL_IDS)
        if kind == 1:
            return "".join(r.choice("0123456789abcdef") for _ in range(32))  # well formed, unknown
        if kind == 2:
            return "".join(chr(r.randint(0x21, 0x7E)) for _ in range(r.randint(1, 64)))
        if kind == 3:
            return self._text(r.choice([r.randint(1, 200), 3000]))
        if kind == 4:  # past grpc's 8-16 KiB metadata limits, were the id echoed whole
            return "s" * r.choice([r.randint(1000, 6000), 20_000])
        if kind == 5 and self.live:  # near misses of a live id
            live = r.choice(self.live).session_id
            return r.choice([live.upper(), live + " ", " " + live, live[:-1], live + "0", live[1:] + live[0]])
        if self.gone:
            return r.choice(self.gone)
        return ""

    def _bad_token(self) -> int:
        return self.rng.choice([self.vocab, self.vocab + 1, 2**31, 2**32 - 1, self.rng.randint(self.vocab, 2**32 - 1)])

    def _tokens(self, size: int, bad: bool) -> list[int]:
        tokens = [self.rng.randrange(self.vocab) for _ in range(size)]
        if bad:
            for _ in range(self.rng.randint(1, 3)):
                tokens.insert(self.rng.randint(0, len(tokens)), self._bad_token())
        return tokens

    def _any_sampling(self) -> dict:
        """Any combination, extreme floats included; _floats_ok tells whether it is valid."""
        r, fields = self.rng, {}
        if r.random() < 0.6:
            fields["temperature"] = r.choice(EXTREME_FLOATS + [r.uniform(-5, 5)])
        if r.random() < 0.5:
            fields["top_p"] = r.choice(EXTREME_FLOATS + [r.uniform(-1, 2)])
        if r.random() < 0.4:
            fields["top_k"] = r.choice([0, 1, 50, self.vocab, 2**31, 2**32 - 1])
        if r.random() < 0.4:
            fields["seed"] = r.choice([0, 1, 2**63 - 1, 2**63, 2**64 - 1, r.getrandbits(64)])
        return fields

    def _valid_sampling(self) -> dict:
        r = self.rng
        fields = {"temperature": r.choice(VALID_TEMPERATURES), "top_p": r.choice(VALID_TOP_P),
                  "top_k": r.choice([0, 1, 2, 2**32 - 1]), "seed": r.choice([0, 2**64 - 1, r.getrandbits(64)])}
        return {k: v for k, v in fields.items() if r.random() < 0.8}

    def _bad_sampling(self) -> dict:
        while True:
            fields = self._any_sampling()
            if not _floats_ok(pb.GenerateRequest(**fields)):
                return fields

    # --- calls ------------------------------------------------------------------------------

    def _unary(self, method: str, request) -> Callable[[], Awaitable[tuple[grpc.StatusCode, Any]]]:
        async def send():
            try:
                return OK, await getattr(self.stub, method)(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details()
        return send

    def _generate(self, request: pb.GenerateRequest) -> Callable[[], Awaitable[tuple[grpc.StatusCode, Any]]]:
        async def send():
            tokens, done = [], None
            try:
                async for response in self.stub.Generate(request, timeout=CALL_TIMEOUT_S):
                    if response.WhichOneof("payload") == "token_id":
                        tokens.append(response.token_id)
                    elif response.WhichOneof("payload") == "done":
                        done = response.done
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details()
            return OK, (tokens, done)
        return send

    def _raw(self, method: str, data: bytes) -> Callable[[], Awaitable[tuple[grpc.StatusCode, Any]]]:
        async def send():
            try:
                if method == "Generate":
                    call = self.channel.unary_stream(SERVICE + method, request_serializer=None,
                                                     response_deserializer=None)
                    return OK, [chunk async for chunk in call(data, timeout=CALL_TIMEOUT_S)]
                call = self.channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
                return OK, await call(data, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details()
        return send

    # --- oracles ----------------------------------------------------------------------------

    def _generate_codes(self, request: pb.GenerateRequest, history: int | None) -> frozenset:
        """history: None for an unknown session, else a lower bound of the session's history."""
        if not _floats_ok(request) or request.max_tokens == 0:
            return frozenset({INVALID})
        if history is None:
            return frozenset({NOT_FOUND})
        if request.max_tokens > self.max_generate:
            return frozenset({INVALID})
        if history == 0:
            return frozenset({PRECONDITION})
        assert history + request.max_tokens > self.max_history, "the fuzz only sends cheap generates here"
        return frozenset({INVALID})

    def _created(self, reply) -> None:
        self.created.append(reply.session_id)
        self.tally.created += 1

    def _create_probe(self, request: pb.CreateSessionRequest, category: str, raw: bytes | None = None) -> Probe:
        ok = all(t < self.vocab for t in request.eos_token_ids)
        if raw is None:
            return Probe(category, self._unary("CreateSession", request), frozenset({OK if ok else INVALID}),
                         on_ok=self._created)
        return Probe(category, self._raw("CreateSession", raw), frozenset({OK if ok else INVALID}),
                     on_ok=lambda data: self._created(pb.CreateSessionResponse.FromString(data)))

    # --- the request mix --------------------------------------------------------------------

    def probe(self) -> Probe:
        """One request of the mix, with the codes its answer may have."""
        r = self.rng
        roll = r.random() * 100
        if roll < 6:
            return self._create()
        if roll < 36:
            return self._unknown_session()
        if roll < 74:
            return self._live_session_bad()
        if roll < 80:
            return self._empty_session()
        if roll < 90:
            return self._wire_probe()
        if roll < 99:
            return self._cheap_read()
        return self._live_append_valid()

    def _create(self) -> Probe:
        """CreateSession: labels up to 4 KB, EOS lists with out-of-vocabulary ids."""
        r = self.rng
        eos = [r.randrange(self.vocab) for _ in range(r.choice([0, 1, 3, 64]))]
        if r.random() < 0.4:
            eos.insert(r.randint(0, len(eos)), self._bad_token())
        label = self._text(r.choice([0, 10, 200, 1000, 4096]))
        return self._create_probe(pb.CreateSessionRequest(client_label=label, eos_token_ids=eos), "create")

    def _unknown_session(self) -> Probe:
        """Any call on an unknown, garbage, near-miss or closed id."""
        r = self.rng
        session_id = self._unknown_id()
        op = r.randrange(4)
        if op == 0:
            tokens = self._tokens(r.choice([0, 1, 5, 100]), bad=r.random() < 0.5)
            return Probe("unknown:append", self._unary(
                "AppendTokens", pb.AppendTokensRequest(session_id=session_id, token_ids=tokens)),
                frozenset({NOT_FOUND}))
        if op == 1:
            return Probe("unknown:info", self._unary(
                "GetSessionInfo", pb.GetSessionInfoRequest(session_id=session_id)), frozenset({NOT_FOUND}))
        if op == 2:
            return Probe("unknown:close", self._unary(
                "CloseSession", pb.CloseSessionRequest(session_id=session_id)), frozenset({NOT_FOUND}))
        request = pb.GenerateRequest(session_id=session_id, max_tokens=r.choice([0, 1, 2, 8192, 2**32 - 1]),
                                     **self._any_sampling())
        return Probe("unknown:generate", self._generate(request), self._generate_codes(request, None))

    def _live_session_bad(self) -> Probe:
        """Bad requests on a live session (cheap: none of them runs the model); some info reads."""
        r = self.rng
        live = r.choice(self.live)
        sid = live.session_id
        kind = r.random() * 38
        if kind < 14:
            tokens = self._tokens(r.choice([0, 1, 7, 64, 500]), bad=True)
            return Probe("live:append-out-of-vocab", self._unary(
                "AppendTokens", pb.AppendTokensRequest(session_id=sid, token_ids=tokens)), frozenset({INVALID}),
                session_id=sid)
        if kind < 16:  # the history would pass the model's context
            size = self.max_history - live.start + 1 + r.randint(0, 50)
            return Probe("live:append-over-context", self._unary(
                "AppendTokens", pb.AppendTokensRequest(session_id=sid, token_ids=[5] * size)), frozenset({INVALID}),
                session_id=sid)
        if kind < 16.5:
            size = self.max_append + 1 + r.randint(0, 10)
            return Probe("live:append-over-limit", self._unary(
                "AppendTokens", pb.AppendTokensRequest(session_id=sid, token_ids=[7] * size)), frozenset({INVALID}),
                session_id=sid)
        if kind < 26:
            request = pb.GenerateRequest(session_id=sid, max_tokens=r.choice([0, 1, 2, 2**32 - 1]),
                                         **self._bad_sampling())
            return Probe("live:generate-bad-sampling", self._generate(request),
                         self._generate_codes(request, live.start), session_id=sid)
        if kind < 34:
            # 0, over max_generate_tokens, or history + max_tokens past the context (history only grows).
            max_tokens = r.choice([0, self.max_generate + 1, 2**31, 2**32 - 1, r.randint(self.max_generate, 2**32 - 1),
                                   r.randint(self.max_history - live.start + 1, self.max_generate)])
            request = pb.GenerateRequest(session_id=sid, max_tokens=max_tokens, **self._valid_sampling())
            return Probe("live:generate-bad-max-tokens", self._generate(request),
                         self._generate_codes(request, live.start), session_id=sid)
        return Probe("live:info", self._unary("GetSessionInfo", pb.GetSessionInfoRequest(session_id=sid)),
                     frozenset({OK}), on_ok=lambda reply: self._check_live_info(live, reply), session_id=sid)

    def _empty_session(self) -> Probe:
        """Sessions with an empty history: Generate is FAILED_PRECONDITION unless its parameters are bad."""
        r = self.rng
        sid = r.choice(self.empty)
        if r.random() < 0.3:
            return Probe("empty:append-out-of-vocab", self._unary(
                "AppendTokens", pb.AppendTokensRequest(session_id=sid, token_ids=self._tokens(3, bad=True))),
                frozenset({INVALID}))
        sampling = self._any_sampling() if r.random() < 0.5 else self._valid_sampling()
        request = pb.GenerateRequest(session_id=sid, max_tokens=r.choice(
            [0, 1, 2, self.max_generate, self.max_generate + 1, 2**32 - 1, r.getrandbits(32)]), **sampling)
        return Probe("empty:generate", self._generate(request), self._generate_codes(request, 0))

    def _cheap_read(self) -> Probe:
        r = self.rng
        if r.random() < 0.5:
            return Probe("runtime-info", self._unary("GetRuntimeInfo", pb.GetRuntimeInfoRequest()), frozenset({OK}))
        sid = r.choice(self.empty)
        return Probe("empty:info", self._unary("GetSessionInfo", pb.GetSessionInfoRequest(session_id=sid)),
                     frozenset({OK}), on_ok=lambda reply: _expect(reply.history_length == 0, "empty history"))

    def _live_append_valid(self) -> Probe:
        """A rare valid append (1-3 tokens)."""
        live = self.rng.choice(self.live)
        tokens = self._tokens(self.rng.randint(1, 3), bad=False)
        live.added += len(tokens)
        return Probe("live:append-valid", self._unary(
            "AppendTokens", pb.AppendTokensRequest(session_id=live.session_id, token_ids=tokens)),
            frozenset({OK}), on_ok=lambda reply: self._check_live_info(live, reply), session_id=live.session_id,
            adds=(live, len(tokens)))

    def valid_generate(self) -> Probe:
        """A valid Generate with extreme but valid sampling: it runs the model (at most 2 tokens)."""
        live = self.live[self.batches % len(self.live)]
        max_tokens = self.rng.randint(1, 2)
        live.added += max_tokens
        request = pb.GenerateRequest(session_id=live.session_id, max_tokens=max_tokens, **self._valid_sampling())
        return Probe("live:generate-valid", self._generate(request), frozenset({OK}),
                     on_ok=lambda result: self._check_valid_generate(result, max_tokens), session_id=live.session_id,
                     adds=(live, max_tokens))

    def _wire_probe(self) -> Probe:
        r = self.rng
        method = r.choice(list(REQUEST_TYPES))
        if r.random() < 0.5:
            data = r.randbytes(r.choice([1, 2, 5, 16, 64, 300]))
        else:  # a well-formed request, then damaged
            base = {"CreateSession": pb.CreateSessionRequest(client_label=self._text(8), eos_token_ids=[3, 70000]),
                    "AppendTokens": pb.AppendTokensRequest(session_id=self._unknown_id(), token_ids=[1, 2, 300]),
                    "GetSessionInfo": pb.GetSessionInfoRequest(session_id=self._unknown_id()),
                    "Generate": pb.GenerateRequest(session_id=self._unknown_id(), max_tokens=3, temperature=0.5,
                                                   top_p=0.9, seed=7)}[method]
            data = bytearray(base.SerializeToString())
            for _ in range(r.randint(1, 3)):
                action = r.randrange(3)
                if action == 0 and data:
                    data[r.randrange(len(data))] = r.randrange(256)
                elif action == 1 and data:
                    del data[r.randrange(len(data)):]
                else:
                    data[r.randint(0, len(data)):r.randint(0, len(data))] = r.randbytes(r.randint(1, 4))
            data = bytes(data)
        try:
            request = REQUEST_TYPES[method].FromString(data)
        except DecodeError:
            return Probe(f"wire-undecodable:{method}", self._raw(method, data), frozenset({INVALID}))
        category = f"wire-parsed:{method}"
        if method == "CreateSession":
            return self._create_probe(request, category, raw=data)
        if request.session_id in {live.session_id for live in self.live} | set(self.empty):
            return self._wire_probe()  # damage that happened to restore a live id: not a malformed request
        if method == "Generate":
            return Probe(category, self._raw(method, data), self._generate_codes(request, None))
        return Probe(category, self._raw(method, data), frozenset({NOT_FOUND}))

    # --- checks on successful answers ------------------------------------------------------

    def _check_live_info(self, live: Live, reply) -> None:
        _expect(live.start <= reply.history_length <= live.start + live.added, "live history within the model")

    def _check_valid_generate(self, result, max_tokens: int) -> None:
        tokens, done = result
        _expect(len(tokens) == max_tokens and all(0 <= t < self.vocab for t in tokens), "valid generate's tokens")
        _expect(done is not None and done.generated_token_count == max_tokens
                and done.stop_reason == pb.GenerateDone.STOP_REASON_MAX_TOKENS, "valid generate's done")
        self.tally.valid_generates += 1

    # --- running ----------------------------------------------------------------------------

    async def _run(self, probe: Probe) -> None:
        code, payload = await probe.send()
        tally = self.tally
        if (probe.session_id is not None and code == grpc.StatusCode.RESOURCE_EXHAUSTED
                and "mailbox is full" in str(payload)):
            # The flood filled a live session's bounded mailbox behind a running Generate: the
            # actor answers Overloaded at once instead of queueing without bound (actors/base.py).
            tally.mailbox_full += 1
            probe = replace(probe, expected=probe.expected | {code})
        if code != OK and probe.adds is not None:
            live, count = probe.adds
            live.added -= count  # refused: it added nothing
        tally.requests += 1
        tally.by_code[code.name] += 1
        tally.by_category[probe.category] += 1
        if not probe.servicer:
            tally.wire_codes[f"{probe.category}:{code.name}"] += 1
            return
        tally.servicer_unknown += code == grpc.StatusCode.UNKNOWN
        tally.servicer_internal += code == grpc.StatusCode.INTERNAL
        if code not in probe.expected:
            detail = payload if isinstance(payload, str) else ""
            tally.unexpected.append((probe.category, code.name, sorted(c.name for c in probe.expected), detail[:200]))
            return
        if code == OK and probe.on_ok is not None:
            try:
                probe.on_ok(payload)
            except AssertionError as exc:
                tally.unexpected.append((probe.category, "OK", "check failed", str(exc)))

    def _in_background(self, probe: Probe) -> None:
        task = asyncio.ensure_future(self._run(probe))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _generate_in_background(self, probe: Probe) -> None:
        try:
            await self._run(probe)
        finally:
            self.busy.discard(probe.session_id)

    async def batch(self) -> None:
        """BATCH requests at once. Every 4th batch also starts a valid Generate, which runs on in the
        background; requests that queue behind it on its session run in the background too, so
        the flood never waits for the model (the requests are the same whatever the timing)."""
        self.batches += 1
        if self.batches % 4 == 1:
            valid = self.valid_generate()
            self.busy.add(valid.session_id)
            task = asyncio.ensure_future(self._generate_in_background(valid))
            self.background.add(task)
            task.add_done_callback(self.background.discard)
        now = []
        for probe in [self.probe() for _ in range(BATCH - 1)]:
            if probe.session_id is not None and probe.session_id in self.busy:
                self.tally.behind_generate += 1
                self._in_background(probe)
            else:
                now.append(probe)
        await asyncio.wait_for(asyncio.gather(*(self._run(p) for p in now)), TIMEOUT_S)
        # Close what the batch's CreateSession requests opened (these closes count as requests too).
        created, self.created = self.created, []
        closes = [Probe("close-created", self._unary("CloseSession", pb.CloseSessionRequest(session_id=sid)),
                        frozenset({OK})) for sid in created]
        await asyncio.wait_for(asyncio.gather(*(self._run(p) for p in closes)), TIMEOUT_S)
        self.gone = (self.gone + created)[-64:]

    async def oversized(self) -> None:
        """One message over the server's 16 MiB receive limit: grpc refuses it before the servicer."""
        data = pb.AppendTokensRequest(session_id="x", token_ids=[40000] * (6 * 1024 * 1024)).SerializeToString()
        await self._run(Probe("wire-oversized:AppendTokens", self._raw("AppendTokens", data), frozenset(),
                              servicer=False))


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


async def test_protocol_fuzz(loaded_model):
    handle = await start_server(loaded_model, limits={"max_sessions": 1024})
    runtime = handle.runtime
    try:
        fuzzer = Fuzzer(handle, random.Random(SEED))
        for _ in range(NUM_LIVE):
            sid = await create(handle.stub)
            fuzzer.live.append(Live(sid, await append(handle.stub, sid, LIVE_PROMPT)))
        fuzzer.empty = [await create(handle.stub) for _ in range(NUM_EMPTY)]

        while fuzzer.tally.requests + len(fuzzer.background) < MIN_REQUESTS:
            await fuzzer.batch()
        await fuzzer.oversized()
        if fuzzer.background:
            await asyncio.wait_for(asyncio.wait(set(fuzzer.background)), TIMEOUT_S)
        tally = fuzzer.tally

        summary = {
            "requests": tally.requests, "by_code": dict(tally.by_code), "by_category": dict(tally.by_category),
            "grpc_level_answers": dict(tally.wire_codes), "servicer_unknown": tally.servicer_unknown,
            "servicer_internal": tally.servicer_internal, "unexpected": len(tally.unexpected),
            "sessions_created": tally.created, "valid_generates": tally.valid_generates,
            "behind_a_generate": tally.behind_generate, "mailbox_full": tally.mailbox_full,
        }
        print("fuzz summary:", json.dumps(summary, sort_keys=True))
        assert tally.requests >= MIN_REQUESTS
        assert tally.servicer_unknown == 0 and tally.servicer_internal == 0
        assert not tally.unexpected, tally.unexpected[:20]
        assert tally.valid_generates > 0 and tally.created > 0
        assert sum(n for c, n in tally.by_category.items() if c.startswith("wire-undecodable")) > 500
        assert tally.wire_codes == {"wire-oversized:AppendTokens:RESOURCE_EXHAUSTED": 1}

        # Still healthy: a normal round trip works and health says SERVING.
        health = health_pb2_grpc.HealthStub(handle.channel)
        assert (await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)).status == \
            health_pb2.HealthCheckResponse.SERVING
        assert runtime.scheduler.is_alive
        probe = await create(handle.stub)
        await append(handle.stub, probe, LIVE_PROMPT)
        assert len((await generate(handle.stub, probe, 2)).tokens) == 2
        assert await close(handle.stub, probe) == len(LIVE_PROMPT) + 2

        # Live sessions hold exactly what the valid requests added; the empty ones stayed empty.
        for live in fuzzer.live:
            state = await info(handle.stub, live.session_id)
            assert state.history_length == live.start + live.added
            assert state.kv_resident_tokens + state.pending_tokens == state.history_length
            assert await close(handle.stub, live.session_id) == live.start + live.added
        for sid in fuzzer.empty:
            assert await close(handle.stub, sid) == 0
        await eventually(lambda: runtime.scheduler.num_running == 0, TIMEOUT_S, "the scheduler to be idle")
        assert runtime.registry.num_active == 0, "the fuzz leaked sessions"
        assert runtime.pool.used_bytes == 0 and runtime.pool.num_slabs == 0
        assert runtime.counter("kakeya_session_evicted_total", reason="lru") == 0
        reply = await handle.stub.GetRuntimeInfo(pb.GetRuntimeInfoRequest(), timeout=TIMEOUT_S)
        assert reply.cache_invariant_inv1_violations == reply.cache_invariant_inv2_violations == 0
    finally:
        await handle.stop()


# --- findings, fixed: kept as regression tests ---------------------------------------------------------

UNDECODABLE = [b"\xff", b"\x0a\x03\xff\xfe\xfd"]  # a cut varint; field 1 (a string) holding invalid UTF-8


async def test_undecodable_request_bytes_are_invalid_argument_not_unknown(server):
    codes = []
    for method in REQUEST_TYPES:
        for data in UNDECODABLE:
            with pytest.raises(DecodeError):
                REQUEST_TYPES[method].FromString(data)
            if method == "Generate":
                call = server.channel.unary_stream(SERVICE + method, request_serializer=None,
                                                   response_deserializer=None)(data, timeout=TIMEOUT_S)
                codes.append(await status_of(call.read()))
            else:
                call = server.channel.unary_unary(SERVICE + method, request_serializer=None,
                                                  response_deserializer=None)
                codes.append(await status_of(call(data, timeout=TIMEOUT_S)))
    assert server.runtime.registry.num_active == 0
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * len(codes), codes


@pytest.mark.parametrize("session_id", ["s" * 20_000, "é" * 3_000], ids=["20k-ascii", "3k-non-ascii"])
async def test_very_long_unknown_session_id_is_not_found(stub, session_id):
    codes = [
        await status_of(info(stub, session_id)),
        await status_of(append(stub, session_id, [1])),
        await status_of(close(stub, session_id)),
        await status_of(generate(stub, session_id, 1)),
    ]
    assert codes == [grpc.StatusCode.NOT_FOUND] * 4, codes
