"""POST /v1/responses: OpenAI's Responses API. `previous_response_id` continues the session that
produced that response: its history is the exact ids the model generated, never re-rendered, and
only the new turn's ids are appended."""

from __future__ import annotations

import secrets
import time
from typing import AsyncIterator

from fastapi import Request

from kakeya.actors.messages import GenerateParams
from kakeya.runtime.common.errors import SessionNotFound

from .errors import Json, ResponseNotFound, error_body
from .generation import Generation, sampling, token_limit
from .resident import Lease
from .responses_store import ResponseRecord
from .schemas import ResponsesRequest, text_of
from .sse import event, guarded_stream
from .state import HttpState


def _messages(body: ResponsesRequest) -> list[dict]:
    items = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else \
        [{"role": item.role, "content": text_of(item.content)} for item in body.input]
    return ([{"role": "system", "content": body.instructions}] if body.instructions else []) + items


async def create_response(state: HttpState, request: Request):
    owner = state.authorize(request)
    runtime = state.ready()
    body: ResponsesRequest = await state.body(request, ResponsesRequest)
    template, record = state.template, None
    if body.previous_response_id:
        record = state.responses.get(body.previous_response_id, owner)
        prompt = list(record.history) + list(record.pending) + template.turn_ids(_messages(body))
    else:
        prompt = template.prompt_ids(_messages(body))
    params = GenerateParams(token_limit(runtime.rules, prompt, body.max_output_tokens),
                            sampling(body.temperature, body.top_p, body.seed))
    if record is not None:
        lease = await _continue(state, body.previous_response_id, record, owner)
    else:
        lease = await state.sessions.acquire(owner, template.eos_token_ids, prompt)
    generation = await state.begin(lease, prompt, params, min_tokens=body.kakeya_min_tokens_per_message)
    reply = _Reply(state, body, generation)
    if body.stream:
        return await guarded_stream(generation, state.end, lambda pieces: _events(reply, pieces))
    completed = False
    try:
        await state.run(request, generation)
        completed = True
    finally:
        reply.finish(completed)
    return Json(reply.response())


async def _continue(state: HttpState, response_id: str, record: ResponseRecord, owner: str) -> Lease:
    """The session that produced the response, if it still holds exactly that history; a new
    session fed the same ids where it has moved on (a branch); 404 where it is gone."""
    eos = state.template.eos_token_ids
    session = state.sessions.acquire_exact(owner, eos, record.session_id, record.history)
    if session is not None:
        return Lease(session, owner, eos, list(record.history), len(record.history))
    try:
        state.runtime.registry.get(record.session_id, owner)
    except SessionNotFound:
        state.responses.forget(response_id)
        raise ResponseNotFound(f"response {response_id!r} cannot be continued: its session was evicted") from None
    return await state.sessions.create(owner, eos)


class _Reply:
    """One response: its ids, its object as it grows, and its record once the generation ends."""

    def __init__(self, state: HttpState, body: ResponsesRequest, generation: Generation) -> None:
        self.state, self.body, self.generation = state, body, generation
        self.id = f"resp_{secrets.token_hex(16)}"
        self.item_id = f"msg_{secrets.token_hex(16)}"
        self.created = int(time.time())
        self.sequence = 0

    def finish(self, completed: bool) -> None:
        generation, state = self.generation, self.state
        state.end(generation, completed)
        if completed and generation.reusable and self.body.store is not False:
            lease = generation.lease
            pending = state.template.pending_closing(generation.tokens, generation.finish_reason == "stop")
            state.responses.put(self.id, lease.owner, lease.session.session_id, lease.history, pending)

    @property
    def status(self) -> str:
        return "incomplete" if self.generation.finish_reason == "length" else "completed"

    def item(self, status: str) -> dict:
        content = [self.part()] if status == "completed" else []
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant", "content": content}

    def part(self) -> dict:
        return {"type": "output_text", "text": self.generation.text, "annotations": [], "logprobs": []}

    def response(self, status: str | None = None) -> dict:
        body, generation = self.body, self.generation
        status = status or self.status
        done = status != "in_progress"
        usage = None
        if done:
            prompt, output = generation.prompt_tokens, len(generation.tokens)
            usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": generation.lease.reused_tokens},
                     "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": prompt + output}
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "model": self.state.model_id, "output": [self.item("completed")] if done else [],
                "error": None, "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
                "previous_response_id": body.previous_response_id, "temperature": body.temperature,
                "top_p": body.top_p, "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
                "metadata": body.metadata or {}, "store": body.store is not False, "truncation": "disabled",
                "text": {"format": {"type": "text"}}, "usage": usage}

    def event(self, kind: str, **fields: object) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event(data, kind)


async def _events(reply: _Reply, pieces: AsyncIterator[str]) -> AsyncIterator[bytes]:
    completed = False
    where = {"item_id": reply.item_id, "output_index": 0, "content_index": 0}
    try:
        yield reply.event("response.created", response=reply.response("in_progress"))
        yield reply.event("response.in_progress", response=reply.response("in_progress"))
        yield reply.event("response.output_item.added", output_index=0, item=reply.item("in_progress"))
        yield reply.event("response.content_part.added", **where,
                          part={"type": "output_text", "text": "", "annotations": []})
        async for text in pieces:
            yield reply.event("response.output_text.delta", **where, delta=text, logprobs=[])
        completed = True
        reply.finish(completed)
        yield reply.event("response.output_text.done", **where, text=reply.generation.text, logprobs=[])
        yield reply.event("response.content_part.done", **where, part=reply.part())
        yield reply.event("response.output_item.done", output_index=0, item=reply.item("completed"))
        yield reply.event(f"response.{reply.status}", response=reply.response())
    except Exception as exc:  # noqa: BLE001 - after the headers, an error can only be an event
        error = error_body(exc)[1]["error"]
        yield reply.event("error", code=error["type"], message=error["message"], param=None)
    finally:
        if not completed:
            reply.state.metrics.cancelled_streams.labels("/v1/responses").inc()
            reply.finish(False)
