"""The wire contract: committed stubs are what the pinned generator writes, and field numbers never move.

A changed field number or enum value silently breaks every deployed client, so each one the
contract fixes is spelled out here rather than derived from the .proto file.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FieldDescriptor

from kakeya.proto import generate
from kakeya.proto.v1 import runtime_pb2 as pb

# message -> {field name: number}, for the numbers the v1 contract fixes.
CONTRACT = {
    "CreateSessionRequest": {"client_label": 1, "eos_token_ids": 2},
    "CreateSessionResponse": {"session_id": 1},
    "AppendTokensRequest": {"session_id": 1, "token_ids": 2},
    "AppendTokensResponse": {"history_length": 1},
    "GenerateRequest": {"session_id": 1, "max_tokens": 2, "seed": 3, "temperature": 4, "top_p": 5, "top_k": 6},
    "GenerateResponse": {"token_id": 1, "done": 2, "truncated": 3},
    "GenerateDone": {"stop_reason": 1, "generated_token_count": 2, "prefill_duration_seconds": 3,
                     "total_duration_seconds": 4},
    "HistoryTruncated": {"dropped_token_count": 1},
    "CloseSessionRequest": {"session_id": 1},
    "CloseSessionResponse": {"final_history_length": 1},
    "GetSessionInfoRequest": {"session_id": 1},
    "GetSessionInfoResponse": {"history_length": 1, "kv_live_bytes": 2, "cache_invariant_inv1_violations": 3,
                               "cache_invariant_inv2_violations": 4, "idle_seconds": 5},
}

# Fields added after the original contract keep their numbers too.
ADDITIONS = {
    "GenerateDone": {"prefill_token_count": 5, "draft_token_count": 6, "accepted_draft_token_count": 7},
    "GetRuntimeInfoResponse": {"speculative_mode": 23, "num_draft_tokens": 24, "draft_model_id": 25},
    "GenerateRequest": {"max_tokens_per_message": 7, "min_tokens_per_message": 8},
    "GenerateResponse": {"tokens": 4},
    "CreateSessionRequest": {"no_default_eos": 3},
    "GetSessionInfoResponse": {"kv_used_bytes": 10, "kv_reserved_bytes": 11},
    "ListSessionsResponse": {"sessions": 1},
    "SessionSummary": {"session_id": 1, "client_label": 2, "history_length": 3, "kv_live_bytes": 4,
                       "idle_seconds": 5, "busy": 6},
}

STOP_REASONS = {
    "STOP_REASON_UNSPECIFIED": 0,
    "STOP_REASON_MAX_TOKENS": 1,
    "STOP_REASON_EOS": 2,
    "STOP_REASON_CANCELLED": 3,
    "STOP_REASON_TRUNCATED": 4,
}


def test_committed_stubs_are_regenerated_byte_for_byte(tmp_path):
    """Editing the .proto without rerunning proto/generate.py (or editing a stub by hand) fails here."""
    generate.generate(tmp_path)
    for name in generate.STUB_NAMES:
        fresh = (tmp_path / name).read_bytes()
        committed = (generate.STUB_DIR / name).read_bytes()
        assert fresh == committed, f"{name} differs from what proto/generate.py writes"
    # The gRPC module must import its sibling relatively (it lives in kakeya.proto.v1).
    grpc_stub = (tmp_path / "runtime_pb2_grpc.py").read_text()
    assert "from . import runtime_pb2" in grpc_stub
    assert "from kakeya.v1 import" not in grpc_stub


def test_package_and_service():
    assert pb.DESCRIPTOR.package == "kakeya.v1"
    service = pb.DESCRIPTOR.services_by_name["RuntimeService"]
    methods = {m.name: m for m in service.methods}
    assert {"CreateSession", "AppendTokens", "Generate", "CloseSession", "GetSessionInfo",
            "GetRuntimeInfo", "ListSessions"} <= set(methods)
    assert methods["ListSessions"].output_type.name == "ListSessionsResponse"
    assert methods["Generate"].server_streaming and not methods["Generate"].client_streaming
    assert methods["Generate"].output_type.name == "GenerateResponse"


@pytest.mark.parametrize("message", sorted(CONTRACT))
def test_field_numbers(message):
    descriptor = pb.DESCRIPTOR.message_types_by_name[message]
    numbers = {name: descriptor.fields_by_name[name].number for name in CONTRACT[message]}
    assert numbers == CONTRACT[message]


@pytest.mark.parametrize("message", sorted(ADDITIONS))
def test_added_field_numbers(message):
    descriptor = pb.DESCRIPTOR.message_types_by_name[message]
    numbers = {name: descriptor.fields_by_name[name].number for name in ADDITIONS[message]}
    assert numbers == ADDITIONS[message]


def test_generate_request_optional_fields_have_presence():
    """Unset temperature means greedy and unset seed means random: presence must survive the wire."""
    fields = pb.GenerateRequest.DESCRIPTOR.fields_by_name
    for name in ("seed", "temperature", "top_p", "top_k"):
        assert fields[name].has_presence, name
    assert not fields["max_tokens"].has_presence
    assert fields["seed"].type == FieldDescriptor.TYPE_UINT64
    assert fields["temperature"].type == FieldDescriptor.TYPE_FLOAT
    assert fields["top_k"].type == FieldDescriptor.TYPE_UINT32


def test_generate_response_payload_is_one_oneof():
    descriptor = pb.GenerateResponse.DESCRIPTOR
    payload = descriptor.oneofs_by_name["payload"]
    # The contract's three members first; `tokens` (4) only for requests that ask for it.
    assert [f.name for f in payload.fields] == ["token_id", "done", "truncated", "tokens"]
    assert descriptor.fields_by_name["done"].message_type.name == "GenerateDone"
    assert descriptor.fields_by_name["truncated"].message_type.name == "HistoryTruncated"
    response = pb.GenerateResponse(token_id=7)
    response.done.generated_token_count = 3  # setting another member clears the first
    assert response.WhichOneof("payload") == "done"
    assert not response.HasField("token_id")


def test_stop_reason_enum_values():
    enum = pb.GenerateDone.DESCRIPTOR.enum_types_by_name["StopReason"]
    assert {v.name: v.number for v in enum.values} == STOP_REASONS
    assert pb.GenerateDone.DESCRIPTOR.fields_by_name["stop_reason"].enum_type is enum
    for name, number in STOP_REASONS.items():
        assert pb.GenerateDone.StopReason.Value(name) == number


def test_contract_round_trips_through_the_wire_format():
    """Encoding with the stubs and decoding by field number agrees with the contract table."""
    request = pb.GenerateRequest(session_id="s", max_tokens=5, seed=2**64 - 1, temperature=0.5, top_p=0.9, top_k=3)
    decoded = pb.GenerateRequest.FromString(request.SerializeToString())
    assert decoded == request and decoded.seed == 2**64 - 1
    # Field 2, varint 5: tag byte (2 << 3) | 0 == 0x10.
    assert bytes([0x10, 5]) in pb.GenerateRequest(max_tokens=5).SerializeToString()
    done = pb.GenerateResponse(done=pb.GenerateDone(stop_reason=pb.GenerateDone.STOP_REASON_EOS))
    # Field 2 (done), length-delimited: 0x12, then field 1 (stop_reason) varint 2: 0x08 0x02.
    assert done.SerializeToString() == bytes([0x12, 2, 0x08, 2])
