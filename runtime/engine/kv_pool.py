"""The KV pool: hands out session slabs under one byte budget, grows them, and frees them.

Owned by the scheduler actor, which resizes or frees a slab only between steps, never while the
model thread uses it.
"""

from __future__ import annotations

from kakeya.runtime.common.errors import KVExhausted
from kakeya.runtime.forward.session_kv import KVShape, SessionKV


class KVPool:

    def __init__(self, shape: KVShape, budget_bytes: int, block_tokens: int,
                 sink_tokens: int, window_tokens: int, max_chunk_tokens: int,
                 draft_shape: KVShape | None = None) -> None:
        self.shape = shape
        self.draft_shape = draft_shape
        self.budget_bytes = budget_bytes
        self.block_tokens = block_tokens
        self.sink_tokens = sink_tokens
        self.window_tokens = window_tokens
        # Bounded slabs never need more than sinks + window + one step's rows.
        self.bounded_capacity = (
            self._round_up(sink_tokens + window_tokens + max_chunk_tokens) if window_tokens else None
        )
        self._slabs: dict[int, SessionKV] = {}
        self.used_bytes = 0

    def _round_up(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens) * self.block_tokens

    def allocate(self) -> SessionKV:
        kv = SessionKV(self.shape, self.sink_tokens, self.window_tokens)
        if self.draft_shape is not None:
            kv.draft = SessionKV(self.draft_shape, self.sink_tokens, self.window_tokens)
        self._slabs[kv.kv_id] = kv
        return kv

    def bytes_needed(self, kv: SessionKV, total_positions: int) -> int:
        """Extra bytes that reserving room for total_positions would take (its draft slab included)."""
        target = self._target_capacity(total_positions)
        return sum(max(0, target - slab.capacity) * slab.shape.bytes_per_token for slab in self._lease(kv))

    @staticmethod
    def _lease(kv: SessionKV) -> tuple[SessionKV, ...]:
        return (kv,) if kv.draft is None else (kv, kv.draft)

    def _target_capacity(self, total_positions: int) -> int:
        target = self._round_up(max(total_positions, 1))
        if self.bounded_capacity is not None:
            target = min(target, self.bounded_capacity)
        return target

    def reserve(self, kv: SessionKV, total_positions: int) -> None:
        """Grows kv so that total_positions fit, or raises KVExhausted without changing anything.

        A growing slab takes at least a quarter of its size more when the budget allows: each
        growth copies the whole slab, and a long conversation growing one block per turn would
        copy its history again every few turns; geometric steps make the copies O(1) per token.
        """
        if total_positions > kv.capacity:
            roomy = max(total_positions, kv.capacity + kv.capacity // 4)
            if self.used_bytes + self.bytes_needed(kv, roomy) <= self.budget_bytes:
                total_positions = roomy
        extra = self.bytes_needed(kv, total_positions)
        if not extra:
            return
        if self.used_bytes + extra > self.budget_bytes:
            raise KVExhausted(
                f"KV budget exhausted: need {extra} more bytes, {self.budget_bytes - self.used_bytes} free",
                extra)
        before = kv.lease_bytes
        target = self._target_capacity(total_positions)
        for slab in self._lease(kv):
            if slab.capacity < target:
                slab.resize(target)
        self.used_bytes += kv.lease_bytes - before

    def free(self, kv: SessionKV) -> None:
        if self._slabs.pop(kv.kv_id, None) is None:
            return
        self.used_bytes -= kv.lease_bytes
        for slab in self._lease(kv):
            slab.slab = None

    def sessions(self) -> list[SessionKV]:
        """Every session KV the pool holds, oldest first (for tests and tools)."""
        return list(self._slabs.values())

    @property
    def num_slabs(self) -> int:
        return len(self._slabs)

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - self.used_bytes
