"""The protocol as a state machine: random sequences of RPCs, every answer checked against a model.

Hypothesis drives create / append (valid, out-of-vocabulary, empty) / generate (valid, invalid,
cancelled after its first token) / info / close and calls on closed or unknown ids, over a
synchronous channel to the shared server. The model holds each open session's history length;
every status code is checked against docs/service.md's table (INVALID_ARGUMENT leaves the history
unchanged, NOT_FOUND for closed and unknown ids, FAILED_PRECONDITION for Generate on an empty
history), and UNKNOWN or INTERNAL never appear.

The shared server runs on the test's event loop, so the machine runs in a worker thread
(asyncio.to_thread) while the loop keeps serving. CI runs 15 reproducible examples (derandomized);
KAKEYA_SOAK_MINUTES=N runs 30 x N examples with a fresh random seed.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc

from .harness import TIMEOUT_S

SOAK_MINUTES = float(os.environ.get("KAKEYA_SOAK_MINUTES") or 0)
MAX_EXAMPLES = 15 if SOAK_MINUTES <= 0 else max(15, int(SOAK_MINUTES * 30))
MAX_OPEN = 4
MAX_HISTORY = 400  # keeps every step of the machine cheap

INVALID_GENERATE = [
    {"max_tokens": 0},
    {"max_tokens": 2**32 - 1},
    {"max_tokens": 8193},  # over max_generate_tokens
    {"max_tokens": 2, "temperature": -1.0},
    {"max_tokens": 2, "temperature": math.nan},
    {"max_tokens": 2, "temperature": math.inf},
    {"max_tokens": 2, "top_p": 0.0},
    {"max_tokens": 2, "top_p": 1.5},
    {"max_tokens": 2, "top_p": math.nan},
]


class Rpc:
    """Synchronous calls that return (status code, reply); every call has a deadline."""

    def __init__(self, stub: runtime_pb2_grpc.RuntimeServiceStub) -> None:
        self.stub = stub
        self.codes: dict[str, int] = {}

    def _note(self, code: grpc.StatusCode) -> grpc.StatusCode:
        self.codes[code.name] = self.codes.get(code.name, 0) + 1
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), code
        return code

    def unary(self, method: str, request):
        try:
            reply = getattr(self.stub, method)(request, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return self._note(exc.code()), None
        return self._note(grpc.StatusCode.OK), reply

    def generate(self, session_id: str, **fields):
        """(code, tokens, done) of a whole Generate."""
        tokens, done = [], None
        call = self.stub.Generate(pb.GenerateRequest(session_id=session_id, **fields), timeout=TIMEOUT_S)
        try:
            for response in call:
                kind = response.WhichOneof("payload")
                assert done is None, "an event after done"
                if kind == "token_id":
                    tokens.append(response.token_id)
                elif kind == "done":
                    done = response.done
        except grpc.RpcError as exc:
            return self._note(exc.code()), tokens, done
        return self._note(grpc.StatusCode.OK), tokens, done

    def generate_and_cancel(self, session_id: str, max_tokens: int) -> int:
        """Starts a Generate, cancels it after its first token; returns the tokens streamed (1)."""
        call = self.stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=max_tokens), timeout=TIMEOUT_S)
        first = next(call)
        assert first.WhichOneof("payload") == "token_id"
        call.cancel()
        assert self._note(call.code()) == grpc.StatusCode.CANCELLED
        return 1


def make_machine(rpc: Rpc, vocab_size: int):
    token = st.integers(0, vocab_size - 1)
    bad_token = st.integers(vocab_size, 2**32 - 1)

    class ProtocolMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.history: dict[str, int] = {}  # open session id -> expected history length
            self.closed: list[str] = []

        # --- helpers ---------------------------------------------------------------------

        def _pick(self, data) -> str:
            # Creation order, not the random ids' order: the draws stay reproducible.
            return data.draw(st.sampled_from(list(self.history)), label="session")

        def _length(self, session_id: str) -> int:
            code, reply = rpc.unary("GetSessionInfo", pb.GetSessionInfoRequest(session_id=session_id))
            assert code == grpc.StatusCode.OK
            assert reply.kv_resident_tokens + reply.pending_tokens == reply.history_length
            return reply.history_length

        def _has_open(self) -> bool:
            return bool(self.history)

        # --- rules -----------------------------------------------------------------------

        @initialize(tokens=st.lists(token, min_size=1, max_size=8))
        def open_two_sessions(self, tokens):
            """Every run starts with a session that can generate and one with an empty history, so
            every rule (cancels, FAILED_PRECONDITION) is possible from the first step."""
            for prompt in (tokens, []):
                code, reply = rpc.unary("CreateSession", pb.CreateSessionRequest(no_default_eos=True))
                assert code == grpc.StatusCode.OK
                session_id = reply.session_id
                self.history[session_id] = 0
                code, reply = rpc.unary("AppendTokens", pb.AppendTokensRequest(session_id=session_id,
                                                                               token_ids=prompt))
                assert code == grpc.StatusCode.OK and reply.history_length == len(prompt)
                self.history[session_id] = len(prompt)

        @precondition(lambda self: len(self.history) < MAX_OPEN)
        @rule(label=st.text(max_size=20))
        def create(self, label):
            code, reply = rpc.unary("CreateSession", pb.CreateSessionRequest(client_label=label, no_default_eos=True))
            assert code == grpc.StatusCode.OK and len(reply.session_id) == 32
            assert reply.session_id not in self.history
            self.history[reply.session_id] = 0

        @precondition(lambda self: any(n < MAX_HISTORY for n in self.history.values()))
        @rule(data=st.data(), tokens=st.lists(token, min_size=1, max_size=12))
        def append_valid(self, data, tokens):
            session_id = data.draw(st.sampled_from([s for s, n in self.history.items() if n < MAX_HISTORY]))
            code, reply = rpc.unary("AppendTokens", pb.AppendTokensRequest(session_id=session_id, token_ids=tokens))
            assert code == grpc.StatusCode.OK
            self.history[session_id] += len(tokens)
            assert reply.history_length == self.history[session_id]

        @precondition(_has_open)
        @rule(data=st.data(), good=st.lists(token, max_size=4), bad=bad_token, at=st.integers(0, 4))
        def append_out_of_vocab(self, data, good, bad, at):
            session_id = self._pick(data)
            tokens = good[:at] + [bad] + good[at:]
            code, _ = rpc.unary("AppendTokens", pb.AppendTokensRequest(session_id=session_id, token_ids=tokens))
            assert code == grpc.StatusCode.INVALID_ARGUMENT  # and the invariant checks: history unchanged

        @precondition(_has_open)
        @rule(data=st.data())
        def append_empty(self, data):
            session_id = self._pick(data)
            code, reply = rpc.unary("AppendTokens", pb.AppendTokensRequest(session_id=session_id))
            assert code == grpc.StatusCode.OK and reply.history_length == self.history[session_id]

        @precondition(_has_open)
        @rule(data=st.data(), max_tokens=st.integers(1, 4),
              sampling=st.one_of(st.just({}), st.fixed_dictionaries({
                  "temperature": st.floats(0.05, 2.0), "seed": st.integers(0, 2**64 - 1),
                  "top_p": st.floats(0.05, 1.0), "top_k": st.integers(0, 100)})))
        def generate_valid(self, data, max_tokens, sampling):
            session_id = self._pick(data)
            code, tokens, done = rpc.generate(session_id, max_tokens=max_tokens, **sampling)
            if self.history[session_id] == 0:
                assert code == grpc.StatusCode.FAILED_PRECONDITION and not tokens
                return
            assert code == grpc.StatusCode.OK
            # Sessions are created without EOS ids: exactly max_tokens tokens, all in the vocabulary.
            assert len(tokens) == max_tokens and all(0 <= t < vocab_size for t in tokens)
            assert done.stop_reason == pb.GenerateDone.STOP_REASON_MAX_TOKENS
            assert done.generated_token_count == max_tokens
            self.history[session_id] += max_tokens

        @precondition(lambda self: any(n == 0 for n in self.history.values()))
        @rule(data=st.data(), max_tokens=st.integers(1, 4))
        def generate_on_empty_history(self, data, max_tokens):
            session_id = data.draw(st.sampled_from([s for s, n in self.history.items() if n == 0]))
            code, tokens, _ = rpc.generate(session_id, max_tokens=max_tokens)
            assert code == grpc.StatusCode.FAILED_PRECONDITION and not tokens

        @precondition(_has_open)
        @rule(data=st.data(), bad=st.sampled_from(INVALID_GENERATE))
        def generate_invalid(self, data, bad):
            session_id = self._pick(data)
            code, tokens, _ = rpc.generate(session_id, **bad)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and not tokens

        @precondition(lambda self: any(0 < n < MAX_HISTORY for n in self.history.values()))
        @rule(data=st.data())
        def generate_cancelled_after_first_token(self, data):
            session_id = data.draw(st.sampled_from([s for s, n in self.history.items() if 0 < n < MAX_HISTORY]))
            old = self.history[session_id]
            streamed = rpc.generate_and_cancel(session_id, max_tokens=64)
            # Info reports a Generate's tokens while it winds down; an empty append queues behind
            # it, so its answer is the history once the cancelled job has ended.
            code, reply = rpc.unary("AppendTokens", pb.AppendTokensRequest(session_id=session_id))
            assert code == grpc.StatusCode.OK
            now = reply.history_length
            assert old + streamed <= now <= old + streamed + 2
            self.history[session_id] = now

        @precondition(_has_open)
        @rule(data=st.data())
        def info(self, data):
            session_id = self._pick(data)
            assert self._length(session_id) == self.history[session_id]

        @precondition(_has_open)
        @rule(data=st.data())
        def close(self, data):
            session_id = self._pick(data)
            code, reply = rpc.unary("CloseSession", pb.CloseSessionRequest(session_id=session_id))
            assert code == grpc.StatusCode.OK
            assert reply.final_history_length == self.history.pop(session_id)
            self.closed.append(session_id)

        @rule(data=st.data(), kind=st.sampled_from(["closed", "unknown", "garbage"]),
              op=st.sampled_from(["append", "generate", "info", "close"]))
        def call_gone_session(self, data, kind, op):
            if kind == "closed" and self.closed:
                session_id = data.draw(st.sampled_from(self.closed))
            elif kind == "garbage":
                session_id = data.draw(st.text(max_size=40))
            else:
                session_id = secrets.token_hex(16)
            if op == "generate":
                code = rpc.generate(session_id, max_tokens=2)[0]
            else:
                method, request = {
                    "append": ("AppendTokens", pb.AppendTokensRequest(session_id=session_id, token_ids=[1, 2])),
                    "info": ("GetSessionInfo", pb.GetSessionInfoRequest(session_id=session_id)),
                    "close": ("CloseSession", pb.CloseSessionRequest(session_id=session_id)),
                }[op]
                code = rpc.unary(method, request)[0]
            assert code == grpc.StatusCode.NOT_FOUND

        # --- checks after every step -------------------------------------------------------

        @invariant()
        def histories_match_the_model(self):
            for session_id, expected in self.history.items():
                assert self._length(session_id) == expected, session_id

        def teardown(self):
            for session_id in list(self.history):
                code, _ = rpc.unary("CloseSession", pb.CloseSessionRequest(session_id=session_id))
                assert code == grpc.StatusCode.OK
            self.history.clear()

    return ProtocolMachine


async def test_protocol_state_machine(server):
    vocab_size = server.runtime.loaded.vocab_size
    forwards = server.runtime.scheduler.stats.num_forwards

    def run() -> dict[str, int]:
        with grpc.insecure_channel(server.server.address) as channel:
            rpc = Rpc(runtime_pb2_grpc.RuntimeServiceStub(channel))
            run_state_machine_as_test(make_machine(rpc, vocab_size), settings=settings(
                max_examples=MAX_EXAMPLES, stateful_step_count=12, deadline=None, database=None,
                derandomize=SOAK_MINUTES <= 0, suppress_health_check=list(HealthCheck)))
            return rpc.codes

    codes = await asyncio.wait_for(asyncio.to_thread(run), TIMEOUT_S * 5)
    print("state machine status codes:", codes, "forwards:", server.runtime.scheduler.stats.num_forwards - forwards)
    # The (reproducible) runs covered every row of the table the rules can reach.
    assert set(codes) == {"OK", "NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "CANCELLED"}, codes
    assert server.runtime.registry.num_active == 0
