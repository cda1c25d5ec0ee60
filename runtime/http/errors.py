"""Errors over HTTP: OpenAI's error envelope, with the status mapped once from the runtime's hierarchy."""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi.responses import JSONResponse

from kakeya.runtime.common.errors import (FailedPrecondition, InvalidRequest, InvariantViolation, KakeyaError,
                                          Overloaded, SessionNotFound, Unauthenticated, Unavailable)

log = structlog.get_logger(__name__)


class RequestTooLarge(InvalidRequest):
    """The request body is over the server's limit."""


class ResponseNotFound(SessionNotFound):
    """An unknown response id, another API key's, or one whose session was evicted."""


# The one table from error type to (HTTP status, OpenAI error type); the first matching base wins,
# so the subclasses above come before their bases.
STATUS_OF: tuple[tuple[type[KakeyaError], int, str], ...] = (
    (RequestTooLarge, 413, "invalid_request_error"),
    (InvalidRequest, 400, "invalid_request_error"),
    (SessionNotFound, 404, "not_found_error"),
    # A broken cache invariant is the server's fault (its session was closed); the client may retry.
    (InvariantViolation, 500, "server_error"),
    # A session's state is not something an HTTP client can see: the request cannot run as sent.
    (FailedPrecondition, 400, "invalid_request_error"),
    (Overloaded, 429, "server_overloaded"),
    (Unauthenticated, 401, "authentication_error"),
    (Unavailable, 503, "service_unavailable"),
)


def status_of(error: BaseException) -> tuple[int, str]:
    for kind, status, error_type in STATUS_OF:
        if isinstance(error, kind):
            return status, error_type
    return 500, "server_error"


def envelope(message: str, error_type: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_body(error: BaseException) -> tuple[int, dict]:
    """The status and OpenAI error body of an exception; an unexpected one is logged and hidden."""
    status, error_type = status_of(error)
    if status == 500 and not isinstance(error, KakeyaError):
        log.error("http_internal_error", error=repr(error), exc_info=error)
        return status, envelope(f"internal error: {type(error).__name__}", error_type)
    code = "invalid_api_key" if status == 401 else None
    return status, envelope(str(error), error_type, code)


def dump_json(content: Any) -> bytes:
    """UTF-8 JSON; escaped to ASCII in the one case UTF-8 cannot hold it (a lone surrogate), so an
    odd string never turns a reply into a 500."""
    try:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(content, separators=(",", ":")).encode()


class Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dump_json(content)


def error_response(error: BaseException) -> JSONResponse:
    status, body = error_body(error)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Json(body, status_code=status, headers=headers)
