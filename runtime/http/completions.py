"""POST /v1/completions: a text prompt (tokenized as is, no chat template) or token ids."""

from __future__ import annotations

import secrets
import time
from typing import AsyncIterator

from fastapi import Request

from kakeya.actors.messages import GenerateParams
from kakeya.runtime.common.errors import InvalidRequest

from .chat import usage
from .errors import Json
from .generation import Generation, sampling, token_limit
from .schemas import CompletionRequest
from .sse import DONE, error_event, event, guarded_stream
from .state import HttpState


async def completions(state: HttpState, request: Request):
    owner = state.authorize(request)
    runtime = state.ready()
    body: CompletionRequest = await state.body(request, CompletionRequest)
    tokenizer = state.template.tokenizer
    prompt = _encode(tokenizer, body.prompt) if isinstance(body.prompt, str) else list(body.prompt)
    params = GenerateParams(token_limit(runtime.rules, prompt, body.max_tokens),
                            sampling(body.temperature, body.top_p, body.seed))
    lease = await state.sessions.acquire(owner, frozenset(runtime.loaded.eos_token_ids), prompt)
    generation = await state.begin(lease, prompt, params, body.stop_strings,
                                    body.kakeya_min_tokens_per_message)
    head = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
            "model": state.model_id}
    if body.stream:
        return await guarded_stream(generation, state.end,
                                    lambda pieces: _events(state, generation, pieces, head, body.include_usage))
    text = await state.complete(request, generation)
    choice = {"index": 0, "text": text, "finish_reason": generation.finish_reason, "logprobs": None}
    return Json(dict(head, choices=[choice], usage=usage(generation)))


def _encode(tokenizer, text: str) -> list[int]:
    try:
        return tokenizer.encode(text)
    except (TypeError, ValueError) as exc:  # text with no UTF-8 form (a lone surrogate)
        raise InvalidRequest(f"prompt: cannot tokenize: {exc}") from None


def _chunk(head: dict, text: str, finish: str | None = None) -> bytes:
    return event(dict(head, choices=[{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]))


async def _events(state: HttpState, generation: Generation, pieces: AsyncIterator[str], head: dict,
                  include_usage: bool) -> AsyncIterator[bytes]:
    completed = False
    try:
        async for text in pieces:
            yield _chunk(head, text)
        completed = True
        state.end(generation, completed)
        yield _chunk(head, "", generation.finish_reason)
        if include_usage:
            yield event(dict(head, choices=[], usage=usage(generation)))
        yield DONE
    except Exception as exc:  # noqa: BLE001 - after the headers, an error can only be an event
        yield error_event(exc)
    finally:
        state.end_stream(generation, completed, "/v1/completions")
