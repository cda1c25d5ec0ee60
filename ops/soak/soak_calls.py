"""The soak's calls through a RuntimeService stub (grpc.aio): each one counted as a request, and an
unexpected status or a timeout recorded by kind rather than raised, so that traffic goes on.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Awaitable, Callable

import grpc

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc

CALL_TIMEOUT_S = 60.0
SAMPLE_EVERY = 100  # requests between two RSS / KV samples


class Mismatch(Exception):
    """An answer that disagrees with the worker's model of its session."""


class SoakCalls:
    """The RPCs the workers make, the request count and the errors by kind."""

    def __init__(self, stub: runtime_pb2_grpc.RuntimeServiceStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self.stub = stub
        self.metadata = metadata
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self.sample_due = asyncio.Event()  # set every SAMPLE_EVERY requests

    def _options(self) -> dict:
        return {"timeout": CALL_TIMEOUT_S, "metadata": self.metadata or None}

    def _count(self) -> None:
        self.requests += 1
        if self.requests % SAMPLE_EVERY == 0:
            self.sample_due.set()

    async def _counted(self, make: Callable[[], Awaitable], timeout: float | None = CALL_TIMEOUT_S):
        """What `make()` returns, or None after recording an unexpected status or a timeout."""
        try:
            return await asyncio.wait_for(make(), timeout)
        except grpc.aio.AioRpcError as exc:
            self.errors[f"status:{exc.code().name}"] += 1
            return None
        except asyncio.TimeoutError:
            self.errors["timeout"] += 1
            return None
        finally:
            self._count()

    async def unary(self, method, request):
        """The reply, or None after recording an unexpected status."""
        return await self._counted(lambda: method(request, **self._options()))

    async def generate(self, session_id: str, max_tokens: int, sampling: dict):
        """(tokens, done) of a whole Generate, or None after recording an error."""

        async def consume() -> tuple[list[int], pb.GenerateDone | None]:
            tokens, done = [], None
            call = self.stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=max_tokens, **sampling),
                                      **self._options())
            async for response in call:
                if response.WhichOneof("payload") == "token_id":
                    tokens.append(response.token_id)
                elif response.WhichOneof("payload") == "done":
                    done = response.done
            return tokens, done
        return await self._counted(consume)

    async def generate_cancelled(self, session_id: str) -> bool:
        """Starts a long Generate and cancels it after its first token; True if that went as expected."""
        call = self.stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=32), **self._options())

        async def cancel_after_first() -> tuple:
            first = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
            call.cancel()
            return first, await asyncio.wait_for(call.code(), CALL_TIMEOUT_S)
        result = await self._counted(cancel_after_first, timeout=None)  # each step has its own timeout
        if result is None:
            return False
        first, code = result
        if first is grpc.aio.EOF or first.WhichOneof("payload") != "token_id":
            raise Mismatch("cancel: the first event was not a token")
        if code != grpc.StatusCode.CANCELLED:
            self.errors[f"status:{code.name}"] += 1
            return False
        return True

    async def runtime_info(self):
        """GetRuntimeInfo outside the traffic (not counted as a request)."""
        try:
            return await asyncio.wait_for(self.stub.GetRuntimeInfo(pb.GetRuntimeInfoRequest(), **self._options()),
                                          CALL_TIMEOUT_S)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
            self.errors[f"probe:{type(exc).__name__}"] += 1
            return None
