"""The connection under a Client: one gRPC channel, the call metadata, deadlines and error translation.

Sessions and streams make every call through here, so the API key, the default deadline and the
mapping of gRPC failures to SDK exceptions are applied in exactly one place.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import grpc

from kakeya.proto.v1 import runtime_pb2_grpc

from .errors import ClientClosedError, InvalidArgumentError, error_from_rpc

# The runtime accepts messages up to this size; appending a long document must not hit
# gRPC's 4 MiB default first.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def read_root_certificates(source: bytes | str | os.PathLike | None) -> bytes | None:
    """PEM bytes as given, or read from a path; None stays None (the system's roots)."""
    if source is None or isinstance(source, bytes):
        return source
    with open(source, "rb") as file:
        return file.read()


class Transport:
    def __init__(self, address: str, api_key: str | None, timeout_s: float | None, tls: bool = False,
                 root_certificates: bytes | None = None, max_tokens_per_message: int = 1) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        _check_count("max_tokens_per_message", max_tokens_per_message, 2**32 - 1)
        self.address = address
        self.timeout_s = timeout_s
        self.max_tokens_per_message = max_tokens_per_message  # sent with every Generate
        # TLS when asked for, or implied by a trust root; None keeps grpc's default roots.
        self._credentials = (grpc.ssl_channel_credentials(root_certificates=root_certificates)
                             if tls or root_certificates is not None else None)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ())
        self._channel: grpc.aio.Channel | None = None
        self._stub: runtime_pb2_grpc.RuntimeServiceStub | None = None
        self.is_closed = False

    def check_min_tokens_per_message(self, value: int) -> None:
        _check_count("min_tokens_per_message", value, self.max_tokens_per_message)

    def _ready_stub(self) -> runtime_pb2_grpc.RuntimeServiceStub:
        if self.is_closed:
            raise ClientClosedError("the client is closed")
        if self._stub is None:
            # Created on first use, inside the event loop that will run the calls: a grpc.aio
            # channel binds to the loop current when it is made.
            options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                       ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.address, options=options)
            else:
                self._channel = grpc.aio.secure_channel(self.address, self._credentials, options=options)
            self._stub = runtime_pb2_grpc.RuntimeServiceStub(self._channel)
        return self._stub

    async def unary(self, method: str, request: Any) -> Any:
        """Calls one unary RPC under the default deadline; failures come back as KakeyaError."""
        rpc = getattr(self._ready_stub(), method)
        try:
            return await rpc(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc
        except asyncio.CancelledError:
            # Closing the channel cancels its calls; to their callers that is not a task cancellation.
            if self.is_closed and not is_task_cancelling():
                raise ClientClosedError("the client was closed during the call") from None
            raise

    async def download(self, method: str, request: Any) -> list[Any]:
        """Reads a whole server-streaming RPC under the default deadline."""
        call = getattr(self._ready_stub(), method)(request, timeout=self.timeout_s, metadata=self._metadata)
        try:
            return [reply async for reply in call]
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc

    async def upload(self, method: str, requests: list[Any]) -> Any:
        """Sends a client-streaming RPC's messages under the default deadline; returns its reply."""
        call = getattr(self._ready_stub(), method)
        try:
            return await call(iter(requests), timeout=self.timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from exc

    def generate(self, request: Any, timeout_s: float | None) -> grpc.aio.UnaryStreamCall:
        """Starts a Generate stream. It has no default deadline: a long generation is not a fault."""
        return self._ready_stub().Generate(request, timeout=timeout_s, metadata=self._metadata)

    async def close(self) -> None:
        self.is_closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()


def build_request(message_type: type, **fields: Any) -> Any:
    """A request message; ids that are negative, too large or not integers fail here, before any RPC."""
    try:
        return message_type(**fields)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(str(exc)) from exc


def is_task_cancelling() -> bool:
    """Whether the current task was asked to cancel (as opposed to a call cancelled under it)."""
    # Task.cancelling() exists from Python 3.11; before it, assume a real cancellation.
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return True if cancelling is None else cancelling() > 0


def _check_count(name: str, value: object, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ValueError(f"{name} must be an int from 1 to {most}, got {value!r}")
