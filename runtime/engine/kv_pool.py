"""The KV pool: hands out session slabs under one byte budget, grows them, trims them, and frees them.

Owned by the scheduler actor, which resizes or frees a slab only between steps, never while the
model thread uses it. With the engine in its own process the pool keeps the budget's accounts in
the front process, over handles, and each resize or free becomes a KV operation the engine
applies before its next step (runtime/engine/remote_kv.py).
"""

from __future__ import annotations

from typing import Any, Callable

from kakeya.runtime.common.errors import KVExhausted
from kakeya.runtime.forward.session_kv import KVShape, SessionKV

# Makes a session's KV of a shape, sink and window; the owner is the session's verifier KV when
# this is its draft slab. With the engine in its own process, the pool holds handles
# (runtime/engine/remote_kv.py) whose resizes become messages to the engine.
KVFactory = Callable[[KVShape, int, int, "SessionKV | None"], SessionKV]


def local_kv(shape: KVShape, sink_tokens: int, window_tokens: int, owner: SessionKV | None) -> SessionKV:
    return SessionKV(shape, sink_tokens, window_tokens)


def inline(work: Callable[[], Any]) -> Any:
    return work()


class KVPool:

    def __init__(self, shape: KVShape, budget_bytes: int, block_tokens: int,
                 sink_tokens: int, window_tokens: int, max_chunk_tokens: int,
                 draft_shape: KVShape | None = None, kv_factory: KVFactory = local_kv,
                 on_model_thread: Callable[[Callable[[], Any]], Any] = inline) -> None:
        self.shape = shape
        # Runs slab copies (a growing or trimmed slab, a fork, an import) where the forwards run.
        # On a CPU the copy is an OpenMP parallel loop, and OpenMP keeps a thread team per calling
        # thread: one copy from the event loop's thread leaves a second team, and every later
        # step's small kernels run slower while the two share the cores (runner.model_thread).
        self.on_model_thread = on_model_thread
        self._new_kv = kv_factory
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
        kv = self._new_kv(self.shape, self.sink_tokens, self.window_tokens, None)
        if self.draft_shape is not None:
            kv.draft = self._new_kv(self.draft_shape, self.sink_tokens, self.window_tokens, kv)
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
        self._resize([slab for slab in self._lease(kv) if slab.capacity < target], target)
        self.used_bytes += kv.lease_bytes - before

    def trim(self, kv: SessionKV, keep_positions: int) -> None:
        """Gives back the part of a reservation its request left unused, once the request ended.

        The slab shrinks to keep_positions (the session's history) and a quarter more, rounded up
        to a block, and only when it holds more than twice that. A trimmed slab that the next
        request grows again copies the history twice: the factor two confines that to requests
        that left more room unused than the history they copy, and spares the quarter a growing
        slab takes (see reserve), so a long conversation that uses the tokens it asks for is never
        copied by a trim. The quarter kept lets the next turns' appends in without a growth.
        """
        slabs = self._lease(kv)
        keep = max(keep_positions + keep_positions // 4, *(slab.num_resident for slab in slabs))
        target = self._target_capacity(keep)
        if kv.capacity <= 2 * target:
            return
        before = kv.lease_bytes
        self._resize([slab for slab in slabs if slab.capacity > target], target)
        self.used_bytes += kv.lease_bytes - before

    def _resize(self, slabs: list[SessionKV], capacity: int) -> None:
        if any(slab.num_resident for slab in slabs):  # a copy, not only an allocation
            self.on_model_thread(lambda: [slab.resize(capacity) for slab in slabs])
        else:
            for slab in slabs:
                slab.resize(capacity)

    def used_positions_bytes(self) -> int:
        """Bytes of the positions every slab stores (the rest of used_bytes is reserved room)."""
        return sum(kv.used_bytes for kv in self._slabs.values())

    def free(self, kv: SessionKV) -> None:
        if self._slabs.pop(kv.kv_id, None) is None:
            return
        self.used_bytes -= kv.lease_bytes
        for slab in self._lease(kv):
            slab.release()

    def sessions(self) -> list[SessionKV]:
        """Every session KV the pool holds, oldest first (for tests and tools)."""
        return list(self._slabs.values())

    @property
    def num_slabs(self) -> int:
        return len(self._slabs)

    @property
    def free_bytes(self) -> int:
        return self.budget_bytes - self.used_bytes
