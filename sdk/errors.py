"""The SDK's exceptions, mirroring the runtime's status codes in one table.

Every error a call raises is a `KakeyaError`; gRPC's own exception types never reach callers.
"""

from __future__ import annotations

import grpc


class KakeyaError(Exception):
    """Base of every SDK error. `code` is the gRPC status, or None when raised locally without an RPC."""

    code: grpc.StatusCode | None = None

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class SessionNotFoundError(KakeyaError):
    """Unknown, closed or evicted session id."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidArgumentError(KakeyaError):
    """The request was malformed or out of range; the session's history is unchanged."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPreconditionError(KakeyaError):
    """The session's state does not allow the request (e.g. Generate on an empty history)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(KakeyaError):
    """Sessions or KV memory are full and nothing idle could be evicted."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnauthenticatedError(KakeyaError):
    """Missing or wrong API key."""

    code = grpc.StatusCode.UNAUTHENTICATED


class RuntimeUnavailableError(KakeyaError):
    """The runtime is unreachable, still loading its model, or shutting down; retrying may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(KakeyaError):
    """The call did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(KakeyaError):
    """The runtime failed unexpectedly, or answered with a status the SDK does not know."""

    code = grpc.StatusCode.INTERNAL


class SessionClosedError(KakeyaError):
    """The session was closed through this object; raised locally, no RPC is made."""


class ClientClosedError(KakeyaError):
    """The client was closed; raised locally, no RPC is made."""


# The one table from status code to exception type; codes not listed become InternalError.
ERROR_OF_STATUS: dict[grpc.StatusCode, type[KakeyaError]] = {
    grpc.StatusCode.NOT_FOUND: SessionNotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: RuntimeUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def error_from_rpc(error: grpc.RpcError) -> KakeyaError:
    """The SDK exception for a failed call, keeping the server's message and the actual status code."""
    code = error.code()
    kind = ERROR_OF_STATUS.get(code, InternalError)
    message = error.details() or code.name
    return kind(message, code)
