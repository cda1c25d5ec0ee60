"""A session's KV as the front process holds it when the engine runs in a process of its own.

The slab lives in the engine process; the front keeps a handle with the same bookkeeping as a
SessionKV (kv_id, positions, window start, capacity), so the KV pool, the scheduler and the
session actors account for it exactly as for a local slab. The engine's reply to each step sets
the handle's positions; each resize or free the pool makes is queued as a KV operation, which
the engine applies before the next step (or at once, through a flush, for a free). A fork's copy
and an import's rows go the same way; an export's read-out is a round trip (`KVOps.read`), made
between steps like every slab change.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from kakeya.runtime.forward.session_kv import KVShape, SessionKV

# ("resize", kv_id, is_draft, capacity) | ("free", kv_id) | ("copy", source_id, kv_id)
# | ("write", kv_id, num_positions, window_start, rows, data) | ("sampler", key, params) | ("forget_sampler", key)
KVOp = tuple


class KVOps:
    """The queue of KV operations for the engine, in order. Appended on the event loop (and by
    sampler finalizers), drained by the engine client's thread: deque appends and pops are atomic."""

    def __init__(self) -> None:
        self._queue: deque[KVOp] = deque()
        # Asks the client to send the queue now, not with the next step, which may be long in coming:
        # a free gives memory back, and an import's rows are best not held here until then.
        self.send_now: Callable[[], None] | None = None
        # (kv_id, first_row) -> the slab's stored rows from first_row on, read in the engine after
        # the queue is applied (session_snapshot.KVImage); set by the engine client.
        self.read: Callable[[int, int], Any] | None = None

    def append(self, op: KVOp) -> None:
        self._queue.append(op)

    def drain(self) -> tuple[KVOp, ...]:
        taken = []
        while self._queue:
            taken.append(self._queue.popleft())
        return tuple(taken)

    def __len__(self) -> int:
        return len(self._queue)


class RemoteKV(SessionKV):
    """A handle on a session's slab in the engine process (or on its draft slab, with an owner)."""

    def __init__(self, shape: KVShape, sink_tokens: int, window_tokens: int, owner: SessionKV | None,
                 ops: KVOps) -> None:
        super().__init__(shape, sink_tokens, window_tokens)
        self._ops = ops
        self._capacity = 0
        self._owner_id = owner.kv_id if owner is not None else None

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def nbytes(self) -> int:
        return self._capacity * self.bytes_per_token

    def resize(self, capacity: int) -> None:
        self._capacity = capacity
        if self._owner_id is None:
            self._ops.append(("resize", self.kv_id, False, capacity))
        else:
            self._ops.append(("resize", self._owner_id, True, capacity))

    def release(self) -> None:
        self._capacity = 0
        if self._owner_id is None:  # the engine frees a session's draft slab with it
            self._ops.append(("free", self.kv_id))
            if self._ops.send_now is not None:
                self._ops.send_now()

    def copy_from(self, source: "RemoteKV") -> None:
        """A fork: the engine copies source's stored rows (and its draft slab's) into this slab."""
        self._ops.append(("copy", source.kv_id, self.kv_id))
        self.set_state(source.num_positions, source.window_start)
        if self.draft is not None and source.draft is not None:
            self.draft.set_state(source.draft.num_positions, source.draft.window_start)

    def write_rows(self, num_positions: int, window_start: int, rows: int, data: bytes) -> None:
        """An import: the engine writes these stored rows (the slab's layout, as bytes) into this slab."""
        self._ops.append(("write", self.kv_id, num_positions, window_start, rows, data))
        self.set_state(num_positions, window_start)
        if self._ops.send_now is not None:
            self._ops.send_now()

    def read_rows(self, first_row: int) -> Any:
        """An export: the stored rows from first_row on (a session_snapshot.KVImage), read in the engine."""
        if self._ops.read is None:
            raise RuntimeError("no engine client reads this handle's slab")
        return self._ops.read(self.kv_id, first_row)

    def compact_for(self, num_new: int) -> None:
        raise RuntimeError("a KV handle is compacted by the engine that holds its slab")

    def set_state(self, num_positions: int, window_start: int) -> None:
        """The engine's positions after a step."""
        self.num_positions = num_positions
        self.window_start = window_start


def remote_kv_factory(ops: KVOps):
    """The KV pool's factory of handles whose operations go to `ops`."""
    def make(shape: KVShape, sink_tokens: int, window_tokens: int, owner: SessionKV | None) -> RemoteKV:
        return RemoteKV(shape, sink_tokens, window_tokens, owner, ops)
    return make
