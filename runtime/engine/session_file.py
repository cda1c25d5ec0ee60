"""The durable session file: append-only records, each checked by its own SHA-256.

A file is one header record (who owns the session, which model and KV layout it belongs to)
followed by state records, one per completed request: the history tokens added since the last
record and the KV rows written since (all rows again when bounded mode compacted the slab).
Replaying the records gives the session as of its last complete record. A record cut short at
the end of the file is a write that a crash interrupted: it is dropped, and the request it
belonged to never completed. A complete record that fails its checksum, or records that do not
fit together, make the file corrupt.

KV rows are stored as raw bytes of the slab's dtype in the slab's layout: a record of R rows
holds [lanes, R, row_bytes] with lanes = layers * 2 * kv_heads and row_bytes = head_dim * itemsize.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import torch

from kakeya.runtime.engine.session_snapshot import KVImage

MAGIC = b"KKS1"
HEADER, STATE = b"H", b"S"
_HEAD = struct.Struct(">4scIQ")  # magic, kind, meta bytes, data bytes
_DIGEST_BYTES = 32
SUFFIX = ".kks"


class CorruptFile(Exception):
    """The file's records cannot be read back into a session."""


@dataclass(frozen=True, slots=True)
class Replayed:
    header: dict[str, Any]
    history: tuple[int, ...]
    num_fed: int
    reported_dropped: int
    image: KVImage
    good_bytes: int  # the file's length without a cut-off last record


def encode(kind: bytes, meta: dict[str, Any], data: bytes | memoryview = b"") -> bytes:
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    body = _HEAD.pack(MAGIC, kind, len(meta_bytes), len(data)) + meta_bytes + bytes(data)
    return body + hashlib.sha256(body).digest()


def _records(raw: bytes) -> tuple[list[tuple[bytes, dict[str, Any], memoryview]], int]:
    """Every complete record, and where the last complete one ends."""
    view, offset, records = memoryview(raw), 0, []
    while len(raw) - offset >= _HEAD.size:
        magic, kind, meta_len, data_len = _HEAD.unpack_from(raw, offset)
        if magic != MAGIC:
            raise CorruptFile(f"no record starts at byte {offset}")
        end = offset + _HEAD.size + meta_len + data_len + _DIGEST_BYTES
        if end > len(raw):
            break  # cut off by a crash while it was written
        if hashlib.sha256(view[offset:end - _DIGEST_BYTES]).digest() != bytes(view[end - _DIGEST_BYTES:end]):
            raise CorruptFile(f"the record at byte {offset} fails its checksum")
        meta_at = offset + _HEAD.size
        try:
            meta = json.loads(bytes(view[meta_at:meta_at + meta_len]))
        except ValueError as exc:
            raise CorruptFile(f"the record at byte {offset} has unreadable metadata") from exc
        records.append((kind, meta, view[meta_at + meta_len:end - _DIGEST_BYTES]))
        offset = end
    return records, offset


def replay(raw: bytes) -> Replayed:
    """The session a file's complete records describe; CorruptFile if they do not make one."""
    records, good = _records(raw)
    if not records or records[0][0] != HEADER:
        raise CorruptFile("the file does not start with a header record")
    header = records[0][1]
    lanes, row_bytes = int(header["lanes"]), int(header["row_bytes"])
    history: list[int] = []
    pieces: list[tuple[int, memoryview]] = []
    state: dict[str, Any] = {"num_fed": 0, "reported_dropped": 0, "num_positions": 0,
                             "window_start": header["sink_tokens"], "first_row": 0, "rows": 0}
    covered = 0  # rows [0, covered) were written since the last whole rewrite
    for kind, meta, data in records[1:]:
        if kind != STATE or meta["history_start"] != len(history):
            raise CorruptFile("state records do not follow one another")
        if meta["first_row"] > covered or len(data) != meta["rows"] * lanes * row_bytes:
            raise CorruptFile("a state record's KV rows do not continue the previous ones")
        history.extend(meta["tokens"])
        covered = meta["first_row"] + meta["rows"]
        if meta["first_row"] == 0:
            pieces.clear()
        pieces.append((meta["first_row"], data))
        state = meta
    if state["window_start"] is None:  # nothing fed yet: the slab's initial window
        state = {**state, "window_start": header["sink_tokens"]}
    resident = _resident(state["num_positions"], state["window_start"], header["sink_tokens"])
    if covered < resident or state["num_fed"] > len(history):
        raise CorruptFile("the last state record's KV rows are missing")
    data = _assemble(pieces, lanes, row_bytes, resident)
    image = KVImage(state["num_positions"], state["window_start"], 0, resident, data)
    return Replayed(header, tuple(history), state["num_fed"], state["reported_dropped"], image, good)


def _resident(num_positions: int, window_start: int, sink: int) -> int:
    return num_positions if num_positions <= sink else sink + num_positions - window_start


def _assemble(pieces: list[tuple[int, memoryview]], lanes: int, row_bytes: int, resident: int) -> torch.Tensor:
    out = torch.empty(lanes, resident, row_bytes, dtype=torch.uint8)
    for first, data in pieces:
        rows = len(data) // max(lanes * row_bytes, 1)
        if not rows or first >= resident:
            continue
        piece = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(lanes, rows, row_bytes)
        keep = min(rows, resident - first)
        out[:, first:first + keep] = piece[:, :keep]
    return out.reshape(-1)


def state_record(history: tuple[int, ...], history_start: int, num_fed: int, reported_dropped: int,
                 image: KVImage | None) -> bytes:
    """One completed request's record: the tokens after history_start, and the image's rows."""
    meta = {"history_start": history_start, "tokens": list(history[history_start:]), "num_fed": num_fed,
            "reported_dropped": reported_dropped,
            "num_positions": image.num_positions if image is not None else 0,
            "window_start": image.window_start if image is not None else None,
            "first_row": image.first_row if image is not None else 0,
            "rows": image.rows if image is not None else 0}
    data = image.data.numpy().data if image is not None and image.rows else b""
    return encode(STATE, meta, data)
