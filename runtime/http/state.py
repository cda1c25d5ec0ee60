"""What every HTTP handler reads: the runtime once attached, the template, resident sessions and
responses, the caller's identity, and the request body read under its size limit."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from fastapi import Request
from starlette.requests import ClientDisconnect

from kakeya.actors.messages import GenerateParams
from kakeya.runtime.common.errors import InvalidRequest, Unavailable

from .errors import RequestTooLarge
from .generation import Generation
from .metrics import HttpMetrics
from .resident import Lease, ResidentSessions
from .responses_store import ResponseStore
from .schemas import parse
from .template import ChatTemplate

if TYPE_CHECKING:
    from kakeya.runtime.server.host import Host


class Identifies(Protocol):
    def identify(self, metadata: Sequence[tuple[str, str]] | None) -> str: ...


class HttpState:
    def __init__(self, api_keys: Identifies, max_body_bytes: int, metrics: HttpMetrics) -> None:
        self.api_keys = api_keys
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.runtime: "Host | None" = None
        self.template: ChatTemplate | None = None
        self.sessions: ResidentSessions | None = None
        self.responses = ResponseStore()
        self.is_draining = False
        self.unavailable = "the model is still loading"

    def attach(self, runtime: "Host", template: ChatTemplate, reuse_sessions: bool) -> None:
        self.template = template
        self.sessions = ResidentSessions(runtime.registry, reuse_sessions)
        self.runtime = runtime

    def detach(self, reason: str) -> None:
        self.is_draining = True
        self.unavailable = reason
        self.runtime = None

    @property
    def model_id(self) -> str:
        return self.runtime.loaded.model_id if self.runtime is not None else ""

    def authorize(self, request: Request) -> str:
        """The caller's owner id (the same identity gRPC binds sessions to), or Unauthenticated."""
        header = request.headers.get("authorization")
        return self.api_keys.identify([("authorization", header)] if header is not None else [])

    def ready(self) -> "Host":
        if self.runtime is None or self.is_draining:
            raise Unavailable(self.unavailable)
        return self.runtime

    async def body(self, request: Request, model: type) -> Any:
        """The validated body; 413 past the size limit, read no further than that."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise RequestTooLarge(f"the request body of {declared} bytes is over the limit of {self.max_body_bytes}")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise RequestTooLarge(f"the request body is over the limit of {self.max_body_bytes} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            raise InvalidRequest("the client left before its request body arrived") from None
        return parse(model, b"".join(chunks))

    async def begin(self, lease: Lease, tokens: Sequence[int], params: GenerateParams,
                    stop: Sequence[str] = (), min_tokens: int = 1) -> Generation:
        """Starts a generation of `tokens` (the whole prompt) on a leased session holding a prefix of
        it; a streamed piece holds tokens after the first until `min_tokens` are ready."""
        try:
            generation = Generation(lease, tokens[len(lease.history):], params, self.template.tokenizer, stop,
                                    min_tokens)
            await generation.start()
        except BaseException:
            self.sessions.release(lease, reusable=False)
            raise
        return generation

    @staticmethod
    async def run(request: Request, generation: Generation) -> str:
        """The whole reply, for a request that is not streamed: a client that disconnects cancels
        the generation within a step rather than leaving it to run to its token limit."""

        async def watch() -> None:
            try:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
            except Exception:  # noqa: BLE001 - a connection that broke is one that left
                pass
            generation.cancel()

        watcher = asyncio.create_task(watch())
        try:
            return await generation.run()
        finally:
            watcher.cancel()

    async def complete(self, request: Request, generation: Generation) -> str:
        """A whole reply's text; the session is returned after it, whether or not it completed."""
        completed = False
        try:
            text = await self.run(request, generation)
            completed = True
            return text
        finally:
            self.end(generation, completed)

    def end_stream(self, generation: Generation, completed: bool, route: str) -> None:
        """A stream's last word: one that did not complete counts as cancelled, then `end`."""
        if not completed:
            self.metrics.cancelled_streams.labels(route).inc()
        self.end(generation, completed)

    def end(self, generation: Generation, completed: bool) -> None:
        """Returns the session: indexed again after a clean, complete generation, else closed. Once."""
        if generation.ended:
            return
        generation.ended = True
        generation.cancel()
        self.sessions.release(generation.lease, reusable=completed and generation.reusable)
