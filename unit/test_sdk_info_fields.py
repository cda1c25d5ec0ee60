"""The SDK's SessionInfo, RuntimeInfo and SessionSummary declare exactly their message's fields, typed as
the wire types.

Their values are copied field by field from the message descriptor, so the dataclasses are only the
typed face users read; these tests keep that face equal to runtime.proto.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
from google.protobuf.descriptor import FieldDescriptor

from kakeya import RuntimeInfo, SessionInfo, SessionSummary
from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.types import ATTRIBUTE_OF_WIRE_NAME, reply_values

PAIRS = [(SessionInfo, pb.GetSessionInfoResponse), (RuntimeInfo, pb.GetRuntimeInfoResponse),
         (SessionSummary, pb.SessionSummary)]

PYTHON_TYPE_OF = {
    FieldDescriptor.CPPTYPE_INT32: int, FieldDescriptor.CPPTYPE_INT64: int,
    FieldDescriptor.CPPTYPE_UINT32: int, FieldDescriptor.CPPTYPE_UINT64: int,
    FieldDescriptor.CPPTYPE_DOUBLE: float, FieldDescriptor.CPPTYPE_FLOAT: float,
    FieldDescriptor.CPPTYPE_BOOL: bool, FieldDescriptor.CPPTYPE_STRING: str,
}


def _expected_annotations(message_type) -> dict[str, object]:
    """Attribute name -> the type users see: the scalar's Python type, a tuple for a repeated field."""
    expected = {}
    for field in message_type.DESCRIPTOR.fields:
        scalar = PYTHON_TYPE_OF[field.cpp_type]  # a message or enum field would need its own SDK type
        name = ATTRIBUTE_OF_WIRE_NAME.get(field.name, field.name)
        expected[name] = tuple[scalar, ...] if field.is_repeated else scalar
    return expected


@pytest.mark.parametrize(("kind", "message_type"), PAIRS)
def test_dataclass_declares_the_reply_fields_typed_alike(kind, message_type):
    declared = typing.get_type_hints(kind)
    assert declared == _expected_annotations(message_type)
    assert [field.name for field in dataclasses.fields(kind)] == list(declared)


def test_renamed_fields_exist_on_the_wire():
    wire = {field.name for _, message_type in PAIRS for field in message_type.DESCRIPTOR.fields}
    assert set(ATTRIBUTE_OF_WIRE_NAME) <= wire


@pytest.mark.parametrize(("kind", "message_type"), PAIRS)
def test_values_arrive_with_their_declared_types(kind, message_type):
    reply = message_type()
    for field in message_type.DESCRIPTOR.fields:
        if field.is_repeated:
            getattr(reply, field.name).extend([5, 6])
    value = kind.from_proto(reply)
    for name, annotation in typing.get_type_hints(kind).items():
        assert isinstance(getattr(value, name), typing.get_origin(annotation) or annotation), name
    assert hash(value) == hash(kind.from_proto(reply))  # frozen, and tuples keep it hashable


def test_a_reply_without_a_speculative_mode_reads_none():
    info = RuntimeInfo.from_proto(pb.GetRuntimeInfoResponse(model_id="m", default_eos_token_ids=[2, 1]))
    assert (info.model_id, info.default_eos_token_ids, info.speculative_mode) == ("m", (2, 1), "none")
    assert reply_values(pb.GetRuntimeInfoResponse())["speculative_mode"] == ""
