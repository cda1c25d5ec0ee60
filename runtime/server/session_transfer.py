"""ExportSession and ImportSession on the wire: a session's state as a header, KV chunks and a trailer.

An import is checked whole before anything is made: the header must name this runtime's model
fingerprint, KV dtype and bounded-mode settings (else FAILED_PRECONDITION), and the stream must
be complete with a matching SHA-256 (a truncated or altered stream is INVALID_ARGUMENT: the bytes
the client sent are not an exported session). Only then does the registry take a slab for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

import torch

from kakeya.actors.session import SessionActor
from kakeya.actors.session_state import SessionState
from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.runtime.common.errors import FailedPrecondition, InvalidRequest
from kakeya.runtime.engine.session_snapshot import KVImage
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.wire import MalformedRequest

FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20  # well under the runtime's 16 MiB message limit


@dataclass(frozen=True, slots=True)
class Imported:
    state: SessionState
    image: KVImage
    client_label: str
    eos_token_ids: frozenset[int]


def kv_dtype_name(host: Host) -> str:
    return str(host.pool.shape.dtype).removeprefix("torch.")


def export_chunks(host: Host, session: SessionActor, state: SessionState) -> Iterator[pb.SessionChunk]:
    image = state.image
    header = pb.SessionHeader(
        format_version=FORMAT_VERSION, model_fingerprint=host.fingerprint, model_id=host.loaded.model_id,
        kv_dtype=kv_dtype_name(host), sink_tokens=host.pool.sink_tokens, window_tokens=host.pool.window_tokens,
        history=state.history, num_fed=state.num_fed, window_start=image.window_start, kv_rows=image.rows,
        kv_bytes=image.data.numel(), eos_token_ids=sorted(session.eos_token_ids),
        client_label=session.client_label, reported_dropped_tokens=state.reported_dropped)
    digest = hashlib.sha256(header.SerializeToString(deterministic=True))
    yield pb.SessionChunk(header=header)
    data = image.data.numpy()
    for start in range(0, len(data), CHUNK_BYTES):
        piece = data[start:start + CHUNK_BYTES].tobytes()
        digest.update(piece)
        yield pb.SessionChunk(kv_data=piece)
    yield pb.SessionChunk(trailer=pb.SessionTrailer(sha256=digest.digest()))


async def read_import(host: Host, chunks: AsyncIterator[pb.SessionChunk | MalformedRequest]) -> Imported:
    """The session a complete, intact import stream describes, checked against this runtime."""
    header, data, digest, filled = None, None, None, 0
    async for chunk in chunks:
        if isinstance(chunk, MalformedRequest):
            raise InvalidRequest(f"malformed {chunk.type_name}: {chunk.reason}")
        part = chunk.WhichOneof("part")
        if header is None:
            if part != "header":
                raise InvalidRequest("an import stream must start with a header chunk")
            header = chunk.header
            _check_header(host, header)
            data = bytearray(header.kv_bytes)
            digest = hashlib.sha256(header.SerializeToString(deterministic=True))
        elif part == "kv_data":
            if filled + len(chunk.kv_data) > len(data):
                raise InvalidRequest(f"the import stream carries more than the header's {len(data)} KV bytes")
            data[filled:filled + len(chunk.kv_data)] = chunk.kv_data
            filled += len(chunk.kv_data)
            digest.update(chunk.kv_data)
        elif part == "trailer":
            if filled != len(data):
                raise InvalidRequest(f"the import stream is truncated: {filled} of {len(data)} KV bytes")
            if chunk.trailer.sha256 != digest.digest():
                raise InvalidRequest("the import stream's checksum does not match its contents")
            return _imported(header, data)
        else:
            raise InvalidRequest(f"unexpected {part or 'empty'} chunk after the header")
    raise InvalidRequest("the import stream is truncated: it ended before its trailer")


def _check_header(host: Host, header: pb.SessionHeader) -> None:
    if header.format_version != FORMAT_VERSION:
        raise InvalidRequest(f"unknown session format version {header.format_version} (this runtime reads "
                             f"{FORMAT_VERSION})")
    if header.model_fingerprint != host.fingerprint:
        raise FailedPrecondition(f"the session was exported from another model ({header.model_id!r}, fingerprint "
                                 f"{header.model_fingerprint[:12]}); this runtime serves {host.loaded.model_id!r} "
                                 f"({host.fingerprint[:12]})")
    ours = (kv_dtype_name(host), host.pool.sink_tokens, host.pool.window_tokens)
    theirs = (header.kv_dtype, header.sink_tokens, header.window_tokens)
    if theirs != ours:
        raise FailedPrecondition(f"the session's KV settings (dtype, sink, window) {theirs} differ from this "
                                 f"runtime's {ours}")
    if len(header.history) > host.rules.max_history_tokens:
        raise InvalidRequest(f"history of {len(header.history)} tokens exceeds the limit of "
                             f"{host.rules.max_history_tokens} tokens")
    for field in ("history", "eos_token_ids"):
        for token in getattr(header, field):
            if token >= host.loaded.vocab_size:
                raise InvalidRequest(f"{field}: token id {token} is outside the vocabulary "
                                     f"[0, {host.loaded.vocab_size})")
    _check_kv_shape(host, header)


def _check_kv_shape(host: Host, header: pb.SessionHeader) -> None:
    sink = host.pool.sink_tokens
    if header.num_fed > len(header.history):
        raise InvalidRequest(f"num_fed {header.num_fed} exceeds the history's {len(header.history)} tokens")
    if not sink <= header.window_start <= max(header.num_fed, sink):
        raise InvalidRequest(f"window_start {header.window_start} is outside [{sink}, {max(header.num_fed, sink)}]")
    rows = header.num_fed if header.num_fed <= sink else sink + header.num_fed - header.window_start
    if header.kv_rows != rows or header.kv_bytes != rows * host.pool.shape.bytes_per_token:
        raise InvalidRequest(f"{header.kv_rows} KV rows in {header.kv_bytes} bytes do not hold {header.num_fed} "
                             f"fed tokens ({rows} rows of {host.pool.shape.bytes_per_token} bytes)")
    if header.kv_bytes > host.pool.budget_bytes:
        raise FailedPrecondition(f"the session's {header.kv_bytes} KV bytes exceed the KV budget "
                                 f"({host.pool.budget_bytes} bytes)")


def _imported(header: pb.SessionHeader, data: bytearray) -> Imported:
    tensor = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    image = KVImage(header.num_fed, header.window_start, 0, header.kv_rows, tensor)
    state = SessionState(tuple(header.history), header.num_fed, header.reported_dropped_tokens)
    return Imported(state, image, header.client_label, frozenset(header.eos_token_ids))
