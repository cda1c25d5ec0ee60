"""The HTTP API under bad input and bad luck, over raw HTTP: fuzzed bodies, every error status in
OpenAI's envelope, loading and draining, a full server, and a client that leaves mid-stream."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import TIMEOUT_S, eventually
from .http_harness import raw, settled, start_http

pytestmark = pytest.mark.timeout(600)
KEY, OTHER_KEY = "key-a", "key-b"
AUTH = {"Authorization": f"Bearer {KEY}"}
VALID = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
         "/v1/completions": {"prompt": "Hi", "max_tokens": 1},
         "/v1/responses": {"input": "Hi", "max_output_tokens": 1}}
FIELDS = {"/v1/chat/completions": ["messages", "max_tokens", "temperature", "top_p", "stop", "n", "stream", "tools",
                                   "seed", "stream_options", "max_completion_tokens", "tool_choice"],
          "/v1/completions": ["prompt", "max_tokens", "stream", "echo", "stop", "temperature", "seed"],
          "/v1/responses": ["input", "previous_response_id", "max_output_tokens", "instructions", "stream",
                            "temperature", "store"]}
# Text includes lone surrogates now and then: valid JSON escapes with no UTF-8 form.
TEXT = st.text(max_size=12) | st.text(st.characters(categories=("Cs",)), min_size=1, max_size=2)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner,
                                                                                max_size=3), max_leaves=8)


def _bodies(path: str):
    dumps = lambda value: json.dumps(value).encode()  # noqa: E731
    mutated = st.builds(lambda field, value: {**VALID[path], field: value}, st.sampled_from(FIELDS[path]), JSON)
    return st.tuples(st.just(path), st.one_of(
        st.binary(max_size=48), JSON.map(dumps), st.dictionaries(st.sampled_from(FIELDS[path]), JSON,
                                                                 max_size=3).map(dumps), mutated.map(dumps)))


def fuzzed_requests(count: int) -> list[tuple[str, bytes]]:
    """`count` (path, body) pairs, the same every run."""
    found: list[tuple[str, bytes]] = []

    @settings(max_examples=count, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(VALID)).flatmap(_bodies))
    def collect(request: tuple[str, bytes]) -> None:
        found.append(request)

    collect()
    return found


@pytest.fixture(scope="module")
async def http(loaded_model, tokenizer):
    # One token a generation: a fuzzed body that happens to be valid costs one decode step.
    handle = await start_http(loaded_model, tokenizer, limits={"max_generate_tokens": 1, "max_sessions": 8},
                              server={"api_keys": (KEY, OTHER_KEY)}, http={"max_body_bytes": 64 * 1024})
    yield handle
    await handle.stop()


async def test_fuzzed_bodies_never_get_a_5xx_nor_leave_a_session_behind(http):
    requests = fuzzed_requests(600)
    assert len(requests) >= 500
    statuses: list[int] = []
    gate = asyncio.Semaphore(8)

    async def send(path: str, body: bytes) -> None:
        async with gate:
            reply = await raw(http.port, "POST", path, body, AUTH)
        statuses.append(reply.status)
        if reply.status != 200:
            assert set(reply.json()["error"]) >= {"message", "type"}, reply.body

    await asyncio.wait_for(asyncio.gather(*(send(path, body) for path, body in requests)), 300)
    assert len(statuses) == len(requests) and max(statuses) < 500
    assert statuses.count(400) > len(requests) // 2  # most fuzzed bodies are wrong, and said to be
    await settled(http)


async def test_each_bad_request_gets_its_status_in_openai_error_form(http):
    chat = json.dumps(VALID["/v1/chat/completions"]).encode()
    created = (await raw(http.port, "POST", "/v1/responses", json.dumps(VALID["/v1/responses"]).encode(), AUTH)).json()
    continue_other = json.dumps({"input": "Hi", "previous_response_id": created["id"]}).encode()
    tools = json.dumps({**VALID["/v1/chat/completions"], "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}).encode()
    cases = [
        ("POST", "/v1/chat/completions", chat, {}, 401),
        ("POST", "/v1/chat/completions", chat, {"Authorization": "Bearer wrong"}, 401),
        ("GET", "/v1/models", b"", {}, 401),
        ("POST", "/v1/chat/completions", b"{not json", AUTH, 400),
        ("POST", "/v1/chat/completions", b'{"messages": [], "max_tokens": 1}', AUTH, 400),
        ("POST", "/v1/chat/completions", chat[:-1] + b', "frobnicate": true}', AUTH, 400),
        ("POST", "/v1/chat/completions", tools, AUTH, 400),
        ("POST", "/v1/completions", b'{"prompt": [1, 99999999], "max_tokens": 1}', AUTH, 400),
        ("POST", "/v1/completions", b'{"prompt": "x", "max_tokens": 100000}', AUTH, 400),
        ("POST", "/v1/chat/completions", b'{"messages": "' + b"x" * 70_000 + b'"}', AUTH, 413),
        ("POST", "/v1/responses", b'{"input": "Hi", "previous_response_id": "resp_nope"}', AUTH, 404),
        ("POST", "/v1/responses", continue_other, {"Authorization": f"Bearer {OTHER_KEY}"}, 404),
        ("GET", "/v1/nowhere", b"", AUTH, 404),
        ("GET", "/v1/models/not-this-model", b"", AUTH, 404),
        ("GET", "/v1/chat/completions", b"", AUTH, 405),
        # A lone surrogate (an escape with no UTF-8 form) in a value or in a field name.
        ("POST", "/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 1}', AUTH, 400),
        ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', AUTH, 400),
        ("POST", "/v1/chat/completions", chat[:-1] + b', "\\ud800": 1}', AUTH, 400),
        ("POST", "/v1/chat/completions", chat[:-1] + b', "stop": "' + b"s" * 300 + b'"}', AUTH, 400),
    ]
    for method, path, body, headers, status in cases:
        reply = await raw(http.port, method, path, body, headers)
        assert reply.status == status, (path, body[:80], reply.body[:300])
        error = reply.json()["error"]
        assert error["message"] and error["type"], reply.body
    assert (await raw(http.port, "GET", "/health")).json()["status"] == "ok"  # health needs no key
    await settled(http)


async def test_loading_and_draining_answer_503(loaded_model, tokenizer):
    loading = await start_http(None, tokenizer)
    try:
        assert (await raw(loading.port, "GET", "/health")).status == 503
        reply = await raw(loading.port, "POST", "/v1/chat/completions", json.dumps(VALID["/v1/chat/completions"]).encode())
        assert reply.status == 503 and "loading" in reply.json()["error"]["message"]
    finally:
        await loading.stop()
    serving = await start_http(loaded_model, tokenizer)
    try:
        assert (await raw(serving.port, "GET", "/health")).status == 200
        serving.server.http.drain()
        assert (await raw(serving.port, "GET", "/health")).status == 503
        assert (await raw(serving.port, "GET", "/v1/models")).status == 503
    finally:
        await serving.stop()


async def _stream_until_first_token(port: int, body: bytes):
    """Opens a streamed request and reads until its first content chunk; returns the open connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    seen = b""
    while b'"content":"' not in seen.replace(b'"content":""', b""):
        chunk = await asyncio.wait_for(reader.read(4096), TIMEOUT_S)
        assert chunk, seen
        seen += chunk
    assert seen.startswith(b"HTTP/1.1 200")
    return reader, writer


async def test_a_full_server_answers_429_and_a_client_that_leaves_frees_its_session_streamed_or_not(loaded_model, tokenizer):
    handle = await start_http(loaded_model, tokenizer, limits={"max_sessions": 1})
    runtime = handle.runtime
    try:
        long = json.dumps({"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 4000,
                           "temperature": 0, "stream": True}).encode()
        _, writer = await _stream_until_first_token(handle.port, long)
        assert runtime.scheduler.num_running == 1 and runtime.registry.num_active == 1
        other = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}).encode()
        busy = await raw(handle.port, "POST", "/v1/chat/completions", other)
        assert busy.status == 429 and busy.json()["error"]["type"] == "server_overloaded"
        writer.close()  # the client leaves mid-stream
        await eventually(lambda: runtime.scheduler.num_running == 0, TIMEOUT_S, "the generation to stop")
        await eventually(lambda: runtime.registry.num_active == 0, TIMEOUT_S, "the session to close")
        assert runtime.pool.used_bytes == 0
        assert runtime.counter("kakeya_http_streams_cancelled_total", route="/v1/chat/completions") == 1
        assert (await raw(handle.port, "POST", "/v1/chat/completions", other)).status == 200  # the slot is free
        await settled(handle)
        # Not streamed: the client sends its request and leaves while the reply is generated.
        reader, writer = await asyncio.open_connection("127.0.0.1", handle.port)
        whole = long.replace(b'"stream": true', b'"stream": false')
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(whole)}\r\n\r\n".encode() + whole)
        await writer.drain()
        await eventually(lambda: runtime.scheduler.num_running == 1, TIMEOUT_S, "the generation to start")
        writer.close()
        await eventually(lambda: runtime.scheduler.num_running == 0, TIMEOUT_S, "the generation to stop")
        await eventually(lambda: runtime.registry.num_active == 0, TIMEOUT_S, "the session to close")
    finally:
        await handle.stop()


async def test_draining_finishes_a_running_stream_and_refuses_new_requests(loaded_model, tokenizer):
    handle = await start_http(loaded_model, tokenizer)
    body = json.dumps({"messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 24,
                       "temperature": 0, "stream": True}).encode()
    reader_writer = await _stream_until_first_token(handle.port, body)
    stopping = asyncio.create_task(handle.server.stop(TIMEOUT_S))
    try:
        await eventually(lambda: handle.state.is_draining, TIMEOUT_S, "the drain to begin")
        refused = await raw(handle.port, "POST", "/v1/chat/completions", body)
        assert refused.status == 503 and "shutting down" in refused.json()["error"]["message"]
        reader, writer = reader_writer
        rest = await asyncio.wait_for(reader.read(), TIMEOUT_S)  # to the end of the response
        writer.close()
        assert b"data: [DONE]\n\n" in rest and rest.endswith(b"0\r\n\r\n")  # the last chunk, then the end
    finally:
        await asyncio.wait_for(stopping, TIMEOUT_S)


async def test_resident_sessions_are_never_shared_across_api_keys(http):
    messages = [{"role": "user", "content": "Hi"}]
    first = (await raw(http.port, "POST", "/v1/chat/completions",
                       json.dumps({"messages": messages, "temperature": 0}).encode(), AUTH)).json()
    messages += [first["choices"][0]["message"], {"role": "user", "content": "Again"}]
    body = json.dumps({"messages": messages, "temperature": 0}).encode()
    other = (await raw(http.port, "POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {OTHER_KEY}"}))
    assert other.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    same = (await raw(http.port, "POST", "/v1/chat/completions", body, AUTH)).json()
    assert same["usage"]["prompt_tokens_details"]["cached_tokens"] == first["usage"]["total_tokens"]
    await settled(http)
