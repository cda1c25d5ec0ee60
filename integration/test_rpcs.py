"""Every RPC over real gRPC, and the status-code table of docs/service.md."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc

from .harness import TIMEOUT_S, append, close, create, generate, info, status_of

PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2]


async def test_session_round_trip(stub):
    session_id = await create(stub, label="round-trip", eos=(49150, 49151))
    assert len(session_id) == 32 and int(session_id, 16) >= 0  # 128 bits of hex
    first = await info(stub, session_id)
    assert (first.history_length, first.kv_live_bytes, first.pending_tokens) == (0, 0, 0)
    assert first.client_label == "round-trip" and list(first.eos_token_ids) == [49150, 49151]
    assert await append(stub, session_id, PROMPT) == len(PROMPT)
    assert await append(stub, session_id, []) == len(PROMPT)  # empty append: no-op
    assert (await info(stub, session_id)).pending_tokens == len(PROMPT)  # prefill is lazy
    result = await generate(stub, session_id, 6)
    assert len(result.tokens) == 6 and result.done.generated_token_count == 6
    assert result.order[-1] == "done" and result.order.count("done") == 1
    assert result.done.stop_reason == pb.GenerateDone.STOP_REASON_MAX_TOKENS
    assert result.done.prefill_token_count == len(PROMPT)
    assert 0 < result.done.prefill_duration_seconds <= result.done.total_duration_seconds
    after = await info(stub, session_id)
    assert after.history_length == len(PROMPT) + 6
    # The last sampled token is fed by the next Generate, so it is the one pending token.
    assert (after.kv_resident_tokens, after.pending_tokens) == (len(PROMPT) + 5, 1)
    assert after.kv_live_bytes > 0 and after.cache_invariant_inv1_violations == 0
    assert await close(stub, session_id) == len(PROMPT) + 6
    assert await status_of(info(stub, session_id)) == grpc.StatusCode.NOT_FOUND
    assert await status_of(close(stub, session_id)) == grpc.StatusCode.NOT_FOUND


async def test_generated_tokens_join_the_history(stub):
    session_id = await create(stub)
    await append(stub, session_id, PROMPT)
    first = await generate(stub, session_id, 4)
    second = await generate(stub, session_id, 4)
    # The same history fed at once continues identically.
    other = await create(stub)
    await append(stub, other, PROMPT + first.tokens)
    assert (await generate(stub, other, 4)).tokens == second.tokens
    assert (second.done.prefill_token_count, (await info(stub, session_id)).history_length) == (1, len(PROMPT) + 8)
    await close(stub, session_id)
    await close(stub, other)


async def test_eos_stops_generation(stub):
    probe = await create(stub)
    await append(stub, probe, PROMPT)
    expected = (await generate(stub, probe, 8)).tokens
    await close(stub, probe)
    session_id = await create(stub, eos=(expected[2],))
    await append(stub, session_id, PROMPT)
    result = await generate(stub, session_id, 8)
    stop = expected.index(expected[2]) + 1
    assert result.tokens == expected[:stop]
    assert result.done.stop_reason == pb.GenerateDone.STOP_REASON_EOS
    await close(stub, session_id)


async def test_unknown_session_is_not_found(stub):
    missing = "0" * 32
    assert await status_of(append(stub, missing, [1])) == grpc.StatusCode.NOT_FOUND
    assert await status_of(generate(stub, missing, 1)) == grpc.StatusCode.NOT_FOUND
    assert await status_of(info(stub, missing)) == grpc.StatusCode.NOT_FOUND
    assert await status_of(close(stub, missing)) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("sampling", [
    {"max_tokens": 0},
    {"max_tokens": 4, "temperature": -1.0},
    {"max_tokens": 4, "temperature": math.nan},
    {"max_tokens": 4, "top_p": 0.0},
    {"max_tokens": 4, "top_p": 1.5},
    {"max_tokens": 10**6},
    {"max_tokens": 8192},  # history + max_tokens beyond the model's 8,192-token context
    {"max_tokens": 4, "min_tokens_per_message": 2},  # above max_tokens_per_message (unset: 1)
    {"max_tokens": 4, "max_tokens_per_message": 3, "min_tokens_per_message": 4},
])
async def test_bad_generate_is_invalid_and_changes_nothing(stub, sampling):
    session_id = await create(stub)
    await append(stub, session_id, PROMPT)
    assert await status_of(generate(stub, session_id, **sampling)) == grpc.StatusCode.INVALID_ARGUMENT
    assert (await info(stub, session_id)).history_length == len(PROMPT)
    assert len((await generate(stub, session_id, 2)).tokens) == 2  # still usable
    await close(stub, session_id)


async def test_a_minimum_a_message_holds_tokens_after_the_first(stub):
    """min_tokens_per_message = 4: the first token alone (time to first token), then messages of
    exactly 4 (one token a decode step, so none ever catches up past the minimum), then what is
    left when the generation ends; the ids equal one-a-message greedy."""
    expected = {}
    for fields in ({}, {"max_tokens_per_message": 8, "min_tokens_per_message": 4}):
        session_id = await create(stub)
        await append(stub, session_id, PROMPT)
        expected[bool(fields)] = await generate(stub, session_id, 18, **fields)
        await close(stub, session_id)
    held = expected[True]
    assert held.tokens == expected[False].tokens and held.done.generated_token_count == 18
    assert held.message_sizes == [1, 4, 4, 4, 4, 1]
    assert held.order == ["token", "tokens", "tokens", "tokens", "tokens", "token", "done"]


async def test_bad_append_is_invalid_and_changes_nothing(stub, server):
    session_id = await create(stub)
    await append(stub, session_id, PROMPT)
    vocab = server.runtime.loaded.vocab_size
    assert await status_of(append(stub, session_id, [5, vocab])) == grpc.StatusCode.INVALID_ARGUMENT
    assert await status_of(append(stub, session_id, [2**32 - 1])) == grpc.StatusCode.INVALID_ARGUMENT
    over_context = [5] * (server.runtime.loaded.max_context_tokens - len(PROMPT) + 1)
    assert await status_of(append(stub, session_id, over_context)) == grpc.StatusCode.INVALID_ARGUMENT
    assert (await info(stub, session_id)).history_length == len(PROMPT)
    assert await status_of(create(stub, eos=(vocab,))) == grpc.StatusCode.INVALID_ARGUMENT
    await close(stub, session_id)


async def test_generate_on_empty_history_fails_precondition(stub):
    session_id = await create(stub)
    assert await status_of(generate(stub, session_id, 3)) == grpc.StatusCode.FAILED_PRECONDITION
    await close(stub, session_id)


async def test_second_generate_waits_its_turn(stub):
    solo = await create(stub)
    await append(stub, solo, PROMPT)
    expected = (await generate(stub, solo, 24)).tokens
    await close(stub, solo)
    session_id = await create(stub)
    await append(stub, session_id, PROMPT)
    # Issued together; the second waits for the first and continues its history.
    first, second = await asyncio.gather(generate(stub, session_id, 12), generate(stub, session_id, 12))
    assert first.tokens + second.tokens == expected
    assert (await info(stub, session_id)).history_length == len(PROMPT) + 24
    await close(stub, session_id)


async def test_appends_keep_their_order(stub):
    session_id = await create(stub)
    lengths = await asyncio.gather(*(append(stub, session_id, [i + 1] * (i + 1)) for i in range(10)))
    assert sorted(lengths) == [sum(range(1, n + 1)) for n in range(1, 11)]
    assert (await info(stub, session_id)).history_length == 55
    await close(stub, session_id)


async def test_runtime_info(stub, server):
    reply = await stub.GetRuntimeInfo(pb.GetRuntimeInfoRequest(), timeout=TIMEOUT_S)
    assert reply.vocab_size == server.runtime.loaded.vocab_size == 49152
    assert reply.model_id.startswith("SmolLM2-135M-Instruct")
    assert list(reply.default_eos_token_ids) == [2]
    assert (reply.device, reply.dtype, reply.deterministic) == ("cpu", "float32", True)
    assert reply.max_context_tokens == 8192 and reply.kv_bytes_per_token == 30 * 2 * 3 * 64 * 4
    assert reply.version and reply.max_sessions > 0 and reply.kv_budget_bytes > 0


async def test_health_and_reflection(server, loaded_model):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(server.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="kakeya.v1.RuntimeService"), timeout=TIMEOUT_S)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    responses = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = [s.name async for r in responses for s in r.list_services_response.service]
    assert "kakeya.v1.RuntimeService" in names and "grpc.health.v1.Health" in names


async def test_health_not_serving_until_model_attached(loaded_model):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from kakeya.runtime.server.server import RuntimeServer

    from .harness import runtime_config

    server = RuntimeServer(runtime_config())
    address = await server.start()
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
        assert await status_of(create(stub)) == grpc.StatusCode.UNAVAILABLE
    await server.stop(0)


@pytest.mark.parametrize("method", ["CreateSession", "AppendTokens", "GetSessionInfo", "CloseSession",
                                    "GetRuntimeInfo", "ListSessions", "Generate"])
async def test_bytes_that_do_not_parse_are_invalid_argument(server, method):
    """Garbage on the wire gets a typed answer, never UNKNOWN."""
    path = f"/kakeya.v1.RuntimeService/{method}"
    garbage = b"\xff\xff\xff\xff\x0f\x12"
    if method == "Generate":
        call = server.channel.unary_stream(path)(garbage, timeout=TIMEOUT_S)
        assert await status_of(call.read()) == grpc.StatusCode.INVALID_ARGUMENT
    else:
        assert await status_of(server.channel.unary_unary(path)(garbage, timeout=TIMEOUT_S)) == \
            grpc.StatusCode.INVALID_ARGUMENT
