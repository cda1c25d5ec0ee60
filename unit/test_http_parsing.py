"""The HTTP API's pure parts: tool calls in the Hermes form, the streaming holdback that keeps a
call (or a stop string) out of the text, and strict request validation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kakeya.runtime.common.errors import InvalidRequest, InvariantViolation, KVExhausted, Unauthenticated, Unavailable
from kakeya.runtime.http.errors import RequestTooLarge, ResponseNotFound, status_of
from kakeya.runtime.http.schemas import (MAX_TOKENS_PER_MESSAGE, ChatCompletionRequest, CompletionRequest,
                                         ResponsesRequest, parse)
from kakeya.runtime.http.tool_calls import Holdback, parse_reply

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_a_tool_call_becomes_an_openai_tool_call():
    parsed = parse_reply(CALL)
    assert parsed.content is None and len(parsed.tool_calls) == 1
    call = parsed.tool_calls[0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_text_around_calls_stays_content_and_several_calls_keep_their_order():
    parsed = parse_reply("Let me check. " + CALL + CALL.replace("Paris", "Rome"))
    assert parsed.content == "Let me check."
    assert [json.loads(c["function"]["arguments"])["city"] for c in parsed.tool_calls] == ["Paris", "Rome"]


@pytest.mark.parametrize("text", ["<tool_call>not json</tool_call>", '<tool_call>{"arguments": {}}</tool_call>',
                                  "no call at all", "<tool_call>[1, 2]</tool_call>"])
def test_what_is_not_a_call_stays_text(text):
    assert parse_reply(text) == (parse_reply(text).__class__(text, []))


def test_an_unclosed_call_at_the_end_still_parses():
    parsed = parse_reply('<tool_call>{"name": "f", "arguments": "{}"}')
    assert parsed.tool_calls[0]["function"] == {"name": "f", "arguments": "{}"}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(alphabet="ab <>/_tolcal", max_size=30), st.lists(st.integers(1, 40), max_size=6))
def test_the_holdback_streams_text_before_a_call_and_never_a_piece_of_the_marker(prefix, cuts):
    whole = prefix.replace("<tool_call>", "") + CALL
    pieces, at = [], 0
    for cut in sorted(cuts):
        pieces.append(whole[at:cut])
        at = max(at, cut)
    pieces.append(whole[at:])
    holdback = Holdback()
    streamed = "".join(holdback.push(piece) for piece in pieces)
    assert streamed + holdback.flush() == whole
    assert holdback.held and streamed == whole[:whole.index("<tool_call>")]


def test_a_partial_marker_that_never_completes_is_released_at_the_end():
    holdback = Holdback(("STOP",))
    assert holdback.push("go ST") == "go "
    assert not holdback.held and holdback.flush() == "ST"


@pytest.mark.parametrize("body", [
    b"{", b"[]", b"null", b'"text"', b'{"messages": []}', b'{"messages": "hi"}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 3}',
    b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}',
    b'{"messages": [{"role": "user", "content": "hi"}], "unknown_field": 1}',
    b'{"messages": [{"role": "robot", "content": "hi"}]}',
    b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
])
def test_malformed_and_unsupported_chat_bodies_are_invalid_requests(body):
    with pytest.raises(InvalidRequest):
        parse(ChatCompletionRequest, body)


def test_valid_bodies_parse_with_openai_defaults():
    chat = parse(ChatCompletionRequest, b'{"messages": [{"role": "user", "content": "hi"}], '
                                        b'"max_completion_tokens": 4, "stop": "x"}')
    assert chat.token_limit == 4 and chat.stop_strings == ["x"] and chat.temperature is None
    assert parse(CompletionRequest, b'{"prompt": [[1, 2, 3]]}').prompt == [1, 2, 3]
    with pytest.raises(InvalidRequest):
        parse(CompletionRequest, b'{"prompt": ["a", "b"]}')
    assert parse(ResponsesRequest, b'{"input": [{"role": "user", "content": [{"type": "input_text", '
                                   b'"text": "hi"}]}]}').input[0].content[0].text == "hi"


@pytest.mark.parametrize("model,body", [(ChatCompletionRequest, b'{"messages": [{"role": "user", "content": "hi"}]'),
                                        (CompletionRequest, b'{"prompt": "hi"'), (ResponsesRequest, b'{"input": "hi"')])
def test_min_tokens_per_message_defaults_to_one_and_takes_only_1_to_the_ceiling(model, body):
    assert parse(model, body + b"}").kakeya_min_tokens_per_message == 1
    for good in (1, 4, MAX_TOKENS_PER_MESSAGE):
        assert parse(model, body + b', "kakeya_min_tokens_per_message": %d}' % good).kakeya_min_tokens_per_message == good
    for bad in (b"0", b"-1", str(MAX_TOKENS_PER_MESSAGE + 1).encode(), b"2.5", b'"4"', b"true", b"null"):
        with pytest.raises(InvalidRequest, match="kakeya_min_tokens_per_message"):
            parse(model, body + b', "kakeya_min_tokens_per_message": ' + bad + b"}")


def test_errors_map_once_to_http_statuses():
    assert status_of(RequestTooLarge("big"))[0] == 413
    assert status_of(InvalidRequest("bad"))[0] == 400
    assert status_of(ResponseNotFound("gone")) == (404, "not_found_error")
    assert status_of(KVExhausted("full", 1))[0] == 429
    assert status_of(Unavailable("loading"))[0] == 503
    assert status_of(Unauthenticated("who"))[0] == 401
    assert status_of(InvariantViolation("inv1", "x"))[0] == 500
    assert status_of(RuntimeError("bug"))[0] == 500
