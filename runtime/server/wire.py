"""Registers the servicer's methods with gRPC, with request decoding that cannot answer UNKNOWN.

The generated registration lets a request whose bytes do not parse fail inside grpc, which
answers UNKNOWN. Here a parse failure becomes a `MalformedRequest` value that the servicer
turns into INVALID_ARGUMENT through the one error table.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

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


def add_to_server(servicer, server: grpc.aio.Server) -> None:
    handlers = {}
    for method in SERVICE.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=_decoder(request_type),
                                     response_serializer=response_type.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
