"""Copies of one session's KV: a fork into a new slab, a read-out to host bytes, a write-in from them.

Called by the scheduler between steps (the only time a slab may be made, resized or freed), on
slabs the model thread is not using: a session forks or exports only while it has no Generate
running. A made slab is taken from the pool under its byte budget like any session's, and a
failure gives it back, so nothing is left half-made.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from kakeya.runtime.common.errors import InvalidRequest
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.engine.remote_kv import RemoteKV
from kakeya.runtime.forward.loaded_model import LoadedModel
from kakeya.runtime.forward.session_kv import SessionKV

# Bytes of each parameter that go into the model fingerprint: enough to tell checkpoints apart
# without hashing every weight at load.
_FINGERPRINT_SAMPLE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class KVImage:
    """A session's stored K/V on the host: rows [first_row, first_row + rows) of its slab, as raw
    bytes of the slab's dtype in the slab's layout [layers, 2, kv_heads, rows, head_dim]."""

    num_positions: int
    window_start: int
    first_row: int
    rows: int
    data: torch.Tensor  # uint8, contiguous, on the CPU


def fork_kv(pool: KVPool, source: SessionKV) -> SessionKV:
    """A new slab in the pool with source's positions (and its draft slab's) copied on the device,
    here or, for a handle, in the engine process before its next step."""
    kv = pool.allocate()
    try:
        pool.reserve(kv, source.num_positions)
        if isinstance(kv, RemoteKV):
            kv.copy_from(source)
        else:
            copy_rows(kv, source)
    except BaseException:
        pool.free(kv)
        raise
    return kv


def copy_rows(kv: SessionKV, source: SessionKV) -> None:
    """Both slabs here: kv (and its draft slab) takes source's stored rows and positions."""
    for dst, src in ((kv, source), (kv.draft, source.draft)):
        if dst is None or src is None:
            continue
        rows = src.num_resident
        if rows:
            dst.slab[:, :, :, :rows].copy_(src.slab[:, :, :, :rows])
        dst.num_positions, dst.window_start = src.num_positions, src.window_start


def read_kv(kv: SessionKV, first_row: int = 0) -> KVImage:
    """The slab's stored rows from first_row on, copied to host memory (for a handle, read in the
    engine process, a round trip)."""
    if isinstance(kv, RemoteKV):
        return kv.read_rows(first_row)
    rows = max(kv.num_resident - first_row, 0)
    if kv.slab is None or not rows:
        data = torch.empty(0, dtype=torch.uint8)
    else:
        part = kv.slab[:, :, :, first_row:first_row + rows]
        # Always a fresh buffer: the image outlives this step, and the slab goes on changing.
        data = torch.empty(part.shape, dtype=part.dtype).copy_(part).view(torch.uint8).reshape(-1)
    return KVImage(kv.num_positions, kv.window_start, first_row, rows, data)


def image_bytes(kv_rows: int, pool: KVPool) -> int:
    return kv_rows * pool.shape.bytes_per_token


def write_kv(pool: KVPool, image: KVImage) -> SessionKV:
    """A new slab in the pool holding the image's rows (which must start at row 0). A draft slab,
    if the pool has one, starts empty: the draft model catches up from the session's tokens."""
    shape = pool.shape
    resident = image.num_positions if image.num_positions <= pool.sink_tokens else (
        pool.sink_tokens + image.num_positions - image.window_start)
    if image.first_row or image.rows != resident or image.data.numel() != image_bytes(resident, pool):
        raise InvalidRequest(f"KV image holds {image.data.numel()} bytes in {image.rows} rows; "
                             f"{resident} positions need {image_bytes(resident, pool)} bytes")
    kv = pool.allocate()
    try:
        pool.reserve(kv, image.num_positions)
        if isinstance(kv, RemoteKV):
            kv.write_rows(image.num_positions, image.window_start, resident, image.data.numpy().tobytes())
        else:
            write_rows(kv, image)
    except BaseException:
        pool.free(kv)
        raise
    return kv


def write_rows(kv: SessionKV, image: KVImage) -> None:
    """The slab here takes the image's rows (from row 0) and positions."""
    shape = kv.shape
    if image.rows:
        rows = image.data.view(shape.dtype).view(shape.num_layers, 2, shape.num_kv_heads, image.rows, shape.head_dim)
        kv.slab[:, :, :, :image.rows].copy_(rows)
    kv.num_positions, kv.window_start = image.num_positions, image.window_start


def image_from_bytes(num_positions: int, window_start: int, first_row: int, rows: int, data: bytes) -> KVImage:
    """A KVImage of stored rows that crossed the engine boundary as bytes."""
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return KVImage(num_positions, window_start, first_row, rows, tensor)


def model_fingerprint(loaded: LoadedModel, kv_dtype: torch.dtype) -> str:
    """Names the model and KV layout a session's KV belongs to: ids, shapes and a sample of each
    parameter's bytes. Two servers agree on it only when their KV is interchangeable."""
    digest = hashlib.sha256()
    digest.update(repr((loaded.model_id, loaded.vocab_size, loaded.num_layers, loaded.num_kv_heads,
                        loaded.head_dim, str(loaded.dtype), str(kv_dtype))).encode())
    with torch.no_grad():
        for name, param in loaded.model.named_parameters():
            flat = param.detach().reshape(-1)
            count = max(1, _FINGERPRINT_SAMPLE_BYTES // max(flat.element_size(), 1))
            sample = flat[:count].contiguous().cpu().view(torch.uint8)
            digest.update(name.encode() + repr(tuple(param.shape)).encode() + sample.numpy().tobytes())
    return digest.hexdigest()
