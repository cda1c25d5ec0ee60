"""The runtime's error hierarchy; the servicer maps each type to one gRPC status code."""

from __future__ import annotations


class KakeyaError(Exception):
    """Base of every error the runtime reports to a client on purpose."""


class InvalidRequest(KakeyaError):
    """The request is malformed or out of range; nothing was changed."""


class SessionNotFound(KakeyaError):
    """Unknown, closed or evicted session id."""


class FailedPrecondition(KakeyaError):
    """The request is well formed but the session's state does not allow it."""


class InvariantViolation(FailedPrecondition):
    """A cache invariant broke; the session was closed to contain the damage."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"cache invariant {kind} violated: {detail}; the session was closed")
        self.kind = kind


class Overloaded(KakeyaError):
    """A bounded resource is full (sessions, KV budget, a mailbox)."""


class KVExhausted(Overloaded):
    """The KV budget cannot hold a reservation, which would take needed_bytes of free budget."""

    def __init__(self, message: str, needed_bytes: int) -> None:
        super().__init__(message)
        self.needed_bytes = needed_bytes


class Unauthenticated(KakeyaError):
    """Missing or wrong API key."""


class Unavailable(KakeyaError):
    """The runtime is draining or its engine is dead; retrying elsewhere may succeed."""


class EngineDead(Unavailable):
    """The model thread failed; the process is going down."""
