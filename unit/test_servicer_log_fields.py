"""The fields every RPC's log lines carry: a client's oversized session id is bounded."""

from __future__ import annotations

import structlog

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.runtime.server.servicer import _begin


def test_a_huge_session_id_is_logged_as_a_prefix():
    try:
        _begin("GetSessionInfo", pb.GetSessionInfoRequest(session_id="a" * 20_000))
        fields = structlog.contextvars.get_contextvars()
        assert fields["rpc"] == "GetSessionInfo"
        assert fields["session_id"] == "a" * 32 + "..."
        _begin("GetSessionInfo", pb.GetSessionInfoRequest(session_id="b" * 32))
        assert structlog.contextvars.get_contextvars()["session_id"] == "b" * 32
    finally:
        structlog.contextvars.clear_contextvars()
