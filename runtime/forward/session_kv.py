"""One session's KV memory: a growable slab, read and written by the forwards.

Physical layout of a slab: [layers, 2 (k|v), kv_heads, capacity, head_dim]. A session's keys are
written once at their storage index and never restacked; capacity grows in whole blocks, so
memory is proportional to what a session holds. In bounded mode (sink S + window W) the slab
holds the S sink tokens followed by the window; tokens that no query can see any more are
compacted away only when the slab is full, so the copy is amortised over many steps.
With a draft model, each session's lease also holds a draft slab (engine/kv_pool.py sizes both).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from kakeya.runtime.common.errors import FailedPrecondition, Overloaded


def slab_dtype(kv_dtype: str, model_dtype: torch.dtype, device: torch.device, bounded: bool) -> torch.dtype:
    """The dtype session slabs hold (EngineConfig.kv_dtype), or FailedPrecondition where it cannot run.

    fp8 slabs are e4m3 with no scale: K/V are stored rounded to 3 mantissa bits and saturated at
    +-448, and widened back to the model's dtype as the CUDA kernels read them. Only those kernels
    read fp8 slabs: the CPU/MPS path and bounded mode attend through SDPA on the slab itself."""
    if kv_dtype == "auto":
        return model_dtype
    if device.type != "cuda":
        raise FailedPrecondition(f"--kv-dtype {kv_dtype} needs a CUDA device; this runtime runs on {device.type}")
    if bounded:
        raise FailedPrecondition(f"--kv-dtype {kv_dtype} needs full attention (no --window): bounded mode "
                                 "attends through SDPA on the slab")
    if torch.cuda.get_device_capability(device) < (8, 9):
        raise FailedPrecondition(f"--kv-dtype {kv_dtype} needs compute capability 8.9 or later (Ada, Hopper); "
                                 f"{torch.cuda.get_device_name(device)} has "
                                 "{}.{}".format(*torch.cuda.get_device_capability(device)))
    return torch.float8_e4m3fn


@dataclass(frozen=True, slots=True)
class KVShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @property
    def bytes_per_token(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * itemsize


class SessionKV:
    """One session's keys and values. Written by the model thread, resized by the pool."""

    _ids = itertools.count(1)

    def __init__(self, shape: KVShape, sink_tokens: int, window_tokens: int) -> None:
        self.kv_id = next(self._ids)
        self.shape = shape
        self.bytes_per_token = shape.bytes_per_token  # read after every step: not recomputed each time
        self.sink_tokens = sink_tokens
        self.window_tokens = window_tokens  # 0: full attention
        self.slab: torch.Tensor | None = None
        self.num_positions = 0  # positions fed so far == the next token's position
        # Position stored at storage index `sink_tokens`; grows as compaction drops old tokens.
        self.window_start = sink_tokens
        self.draft: SessionKV | None = None  # the draft model's slab for the same session

    @property
    def lease_bytes(self) -> int:
        """Bytes held for the session: this slab and its draft's."""
        return self.nbytes + (self.draft.nbytes if self.draft is not None else 0)

    @property
    def used_bytes(self) -> int:
        """Of lease_bytes, the bytes of the positions stored: this slab's and its draft's."""
        own = self.num_resident * self.bytes_per_token
        return own + (self.draft.used_bytes if self.draft is not None else 0)

    @property
    def capacity(self) -> int:
        return 0 if self.slab is None else self.slab.shape[3]

    @property
    def nbytes(self) -> int:
        return 0 if self.slab is None else self.slab.numel() * self.slab.element_size()

    @property
    def num_resident(self) -> int:
        """Tokens whose K/V are held in the slab."""
        if self.num_positions <= self.sink_tokens:
            return self.num_positions
        return self.sink_tokens + self.num_positions - self.window_start

    @property
    def num_evicted(self) -> int:
        return self.num_positions - self.num_resident

    def storage_index(self, position: int) -> int:
        if position < self.sink_tokens:
            return position
        return self.sink_tokens + position - self.window_start

    def first_visible(self, position: int) -> int:
        """Oldest non-sink position a query at `position` attends to."""
        if not self.window_tokens:
            return self.sink_tokens
        return max(self.sink_tokens, position - self.window_tokens + 1)

    def compact_for(self, num_new: int) -> None:
        """Ensures num_new more positions fit, dropping tokens no future query can see."""
        if self.num_resident + num_new <= self.capacity:
            return
        keep_from = self.first_visible(self.num_positions)
        if keep_from <= self.window_start or self.slab is None:
            raise Overloaded(f"KV slab {self.kv_id} is full ({self.capacity} tokens)")
        src = self.storage_index(keep_from)
        end = self.storage_index(self.num_positions)
        moved = self.slab[:, :, :, src:end].clone()
        self.slab[:, :, :, self.sink_tokens:self.sink_tokens + (end - src)] = moved
        self.window_start = keep_from
        if self.num_resident + num_new > self.capacity:
            raise Overloaded(f"KV slab {self.kv_id} cannot hold {num_new} more tokens")

    def release(self) -> None:
        """Gives the slab's memory back (the pool frees the session)."""
        self.slab = None

    def resize(self, capacity: int) -> None:
        shape = self.shape
        new = torch.empty(shape.num_layers, 2, shape.num_kv_heads, capacity, shape.head_dim,
                          dtype=shape.dtype, device=shape.device)
        if self.slab is not None and self.num_resident:
            new[:, :, :, : self.num_resident] = self.slab[:, :, :, : self.num_resident]
        self.slab = new
