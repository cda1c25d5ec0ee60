"""POST /v1/chat/completions: the conversation rendered with the model's template, the reply as
text or tool calls, whole or streamed."""

from __future__ import annotations

import secrets
import time
from typing import AsyncIterator

from fastapi import Request

from kakeya.actors.messages import GenerateParams

from .errors import Json
from .generation import Generation, sampling, token_limit
from .schemas import ChatCompletionRequest
from .sse import DONE, error_event, event, guarded_stream
from .state import HttpState
from .template import message_dicts, tool_dicts
from .tool_calls import Holdback, parse_reply


def usage(generation: Generation) -> dict:
    completion = len(generation.tokens)
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": completion,
            "total_tokens": generation.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": generation.lease.reused_tokens}}


async def chat_completions(state: HttpState, request: Request):
    owner = state.authorize(request)
    runtime = state.ready()
    body: ChatCompletionRequest = await state.body(request, ChatCompletionRequest)
    template = state.template
    tools = tool_dicts(body.tools) if body.tool_choice != "none" else None
    prompt = template.prompt_ids(message_dicts(body.messages), tools)
    params = GenerateParams(token_limit(runtime.rules, prompt, body.token_limit),
                            sampling(body.temperature, body.top_p, body.seed))
    lease = await state.sessions.acquire(owner, template.eos_token_ids, prompt)
    generation = await state.begin(lease, prompt, params, body.stop_strings,
                                    body.kakeya_min_tokens_per_message)
    head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": state.model_id}
    if body.stream:
        return await _stream(state, generation, head, bool(tools), body.include_usage)
    text = await state.complete(request, generation)
    message, finish = {"role": "assistant", "content": text}, generation.finish_reason
    if tools:
        parsed = parse_reply(text)
        if parsed.tool_calls:
            message, finish = {"role": "assistant", "content": parsed.content, "tool_calls": parsed.tool_calls}, \
                "tool_calls"
    choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
    return Json(dict(head, object="chat.completion", choices=[choice], usage=usage(generation)))


async def _stream(state: HttpState, generation: Generation, head: dict, tools: bool, include_usage: bool):
    return await guarded_stream(generation, state.end,
                                lambda pieces: _events(state, generation, pieces, head, tools, include_usage))


def _chunk(head: dict, delta: dict, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return event(dict(head, object="chat.completion.chunk", choices=[choice]))


async def _events(state: HttpState, generation: Generation, pieces: AsyncIterator[str], head: dict,
                  tools: bool, include_usage: bool) -> AsyncIterator[bytes]:
    completed = False
    holdback = Holdback() if tools else None
    try:
        yield _chunk(head, {"role": "assistant", "content": ""})
        async for text in pieces:
            out = holdback.push(text) if holdback is not None else text
            if out:
                yield _chunk(head, {"content": out})
        finish = generation.finish_reason
        if holdback is not None:
            parsed = parse_reply(holdback.flush())
            if parsed.content:
                yield _chunk(head, {"content": parsed.content})
            if parsed.tool_calls:
                finish = "tool_calls"
                yield _chunk(head, {"tool_calls": [dict(call, index=i) for i, call in enumerate(parsed.tool_calls)]})
        completed = True
        state.end(generation, completed)
        yield _chunk(head, {}, finish)
        if include_usage:
            yield event(dict(head, object="chat.completion.chunk", choices=[], usage=usage(generation)))
        yield DONE
    except Exception as exc:  # noqa: BLE001 - after the headers, an error can only be an event
        yield error_event(exc)
    finally:
        state.end_stream(generation, completed, "/v1/chat/completions")
