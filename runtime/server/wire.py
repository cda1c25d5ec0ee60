"""Registers the servicer's methods with gRPC, with request decoding that cannot answer UNKNOWN.

The generated registration lets a request whose bytes do not parse fail inside grpc, which
answers UNKNOWN. Here a parse failure becomes a `MalformedRequest` value that the servicer
turns into INVALID_ARGUMENT through the one error table.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from kakeya.actors.token_stream import Done, Truncated
from kakeya.proto.v1 import runtime_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["RuntimeService"]


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """Stands in for a request whose bytes are not a valid message of its type."""

    type_name: str
    reason: str


def _decoder(message_type):
    def decode(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return MalformedRequest(message_type.DESCRIPTOR.full_name, str(exc))
    return decode


_HANDLER_OF = {(False, False): grpc.unary_unary_rpc_method_handler,
               (False, True): grpc.unary_stream_rpc_method_handler,
               (True, False): grpc.stream_unary_rpc_method_handler,
               (True, True): grpc.stream_stream_rpc_method_handler}


def add_to_server(servicer, server: grpc.aio.Server) -> None:
    handlers = {}
    for method in SERVICE.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        make = _HANDLER_OF[method.client_streaming, method.server_streaming]
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=_decoder(request_type),
                                     response_serializer=response_type.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))


def tokens_to_proto(tokens: list[int]) -> pb.GenerateResponse:
    """One token as the contract's token_id; more (the request allowed them) as one `tokens`."""
    if len(tokens) == 1:
        return pb.GenerateResponse(token_id=tokens[0])
    return pb.GenerateResponse(tokens=pb.TokenIds(token_ids=tokens))


def event_to_proto(event) -> pb.GenerateResponse:
    if isinstance(event, Truncated):
        return pb.GenerateResponse(truncated=pb.HistoryTruncated(dropped_token_count=event.dropped_token_count))
    if isinstance(event, Done):
        return pb.GenerateResponse(done=pb.GenerateDone(
            stop_reason=event.stop_reason.value,
            generated_token_count=event.generated_token_count,
            prefill_duration_seconds=event.prefill_duration_s,
            total_duration_seconds=event.total_duration_s,
            prefill_token_count=event.prefill_token_count,
            draft_token_count=event.draft_token_count,
            accepted_draft_token_count=event.accepted_draft_token_count,
        ))
    raise TypeError(f"unknown stream event {event!r}")
