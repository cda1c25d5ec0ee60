"""An exported session as one byte string: each of ExportSession's chunks, prefixed by its length.

The runtime checks the contents (model, settings, checksum) when the bytes are imported; this
framing only keeps the chunks apart, so the bytes can be stored in a file or sent anywhere.
"""

from __future__ import annotations

import struct

from google.protobuf.message import DecodeError

from kakeya.proto.v1 import runtime_pb2 as pb

from .errors import InvalidArgumentError

_MAGIC = b"KKYS\x01"
_LENGTH = struct.Struct(">I")


def pack_chunks(chunks: list[pb.SessionChunk]) -> bytes:
    parts = [_MAGIC]
    for chunk in chunks:
        data = chunk.SerializeToString()
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def unpack_chunks(exported: bytes) -> list[pb.SessionChunk]:
    """The chunks of pack_chunks' bytes. A cut-off last chunk is dropped (the runtime then answers
    that the stream is truncated); bytes that are not an export at all fail here."""
    view = memoryview(exported)
    if bytes(view[:len(_MAGIC)]) != _MAGIC:
        raise InvalidArgumentError("these bytes are not an exported Kakeya session")
    chunks, offset = [], len(_MAGIC)
    while offset + _LENGTH.size <= len(view):
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            break
        try:
            chunks.append(pb.SessionChunk.FromString(bytes(view[offset:offset + length])))
        except DecodeError as exc:
            raise InvalidArgumentError(f"a chunk of the exported session does not parse: {exc}") from exc
        offset += length
    return chunks
