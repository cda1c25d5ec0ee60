"""The SDK's pure parts: the status-code table, error translation, and the values built from replies."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from kakeya import KakeyaError, RuntimeInfo, SessionClosedError, SessionInfo, StopReason
from kakeya.errors import ERROR_OF_STATUS, ClientClosedError, InternalError, error_from_rpc
from kakeya.proto.v1 import runtime_pb2 as pb

# The runtime's status table (runtime/servicer.py), plus the codes gRPC itself produces.
RUNTIME_CODES = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED",
                 "UNAUTHENTICATED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"}


def rpc_error(code: grpc.StatusCode, details: str | None) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_every_runtime_status_has_its_own_error_type():
    assert {code.name for code in ERROR_OF_STATUS} == RUNTIME_CODES
    assert len(set(ERROR_OF_STATUS.values())) == len(ERROR_OF_STATUS)
    for code, kind in ERROR_OF_STATUS.items():
        assert issubclass(kind, KakeyaError) and kind.code is code


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_translation_keeps_the_code_and_the_message(code):
    if code is grpc.StatusCode.OK:
        return
    error = error_from_rpc(rpc_error(code, "the runtime's words"))
    assert type(error) is ERROR_OF_STATUS.get(code, InternalError)
    assert error.code is code and error.message == str(error) == "the runtime's words"


def test_translation_without_details_names_the_code():
    assert str(error_from_rpc(rpc_error(grpc.StatusCode.UNAVAILABLE, None))) == "UNAVAILABLE"


def test_local_errors_carry_no_code():
    for kind in (SessionClosedError, ClientClosedError):
        error = kind("closed")
        assert isinstance(error, KakeyaError) and error.code is None


def test_stop_reasons_match_the_wire_enum():
    wire = {name: number for name, number in pb.GenerateDone.StopReason.items() if number}
    assert {f"STOP_REASON_{reason.name}": reason.value for reason in StopReason} == wire


def _filled(message_type):
    """A reply with every field set to a value no other field has."""
    message = message_type()
    for number, field in enumerate(message_type.DESCRIPTOR.fields, start=1):
        if field.is_repeated:
            getattr(message, field.name).extend([1000 + number, 2000 + number])
        elif field.type == field.TYPE_STRING:
            setattr(message, field.name, f"s{number}")
        elif field.type == field.TYPE_BOOL:
            setattr(message, field.name, True)
        else:
            setattr(message, field.name, number)
    return message


def _values(message) -> set:
    values = set()
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        values.add(tuple(value) if field.is_repeated else value)
    return values


@pytest.mark.parametrize(("kind", "message_type"), [
    (SessionInfo, pb.GetSessionInfoResponse),
    (RuntimeInfo, pb.GetRuntimeInfoResponse),
])
def test_values_carry_every_reply_field(kind, message_type):
    reply = _filled(message_type)
    value = kind.from_proto(reply)
    fields = dataclasses.astuple(value)
    assert len(fields) == len(message_type.DESCRIPTOR.fields)
    assert set(fields) == _values(reply)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, dataclasses.fields(kind)[0].name, 0)
