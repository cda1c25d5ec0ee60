"""A session's state as a value: what a fork, an export or a durable record carries, and the
messages that ask a session actor for it.

The session actor answers Fork and Export in its mailbox order, so a fork asked for while a
Generate runs waits for that Generate, like any request. The copies of the slab itself are
SlabOps the scheduler runs between steps (runtime/engine/session_snapshot.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import torch

from kakeya.runtime.common.errors import KVExhausted
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.engine.session_snapshot import KVImage, fork_kv, read_kv, write_kv

from .messages import KVLease, SlabOp, _Replies
from .scheduler import SchedulerActor

EvictFor = Callable[[int, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SessionState:
    """One session's history and the K/V of its fed positions, as of its last completed request."""

    history: tuple[int, ...]
    num_fed: int  # the first num_fed history tokens have K/V in the slab; the rest are pending
    reported_dropped: int = 0  # bounded mode: tokens already reported dropped from view
    lease: KVLease | None = None  # a fork's or an import's new slab, taken from the pool
    image: KVImage | None = None  # an export's copy of the slab, on the host


@dataclass(frozen=True, slots=True)
class Fork(_Replies):
    """Copy the session: the reply's state holds a new slab with the same positions."""

    reply: asyncio.Future[SessionState]


@dataclass(frozen=True, slots=True)
class Export(_Replies):
    """Read the session: the reply's state holds a host copy of its slab from row first_row on."""

    reply: asyncio.Future[SessionState]
    first_row: int = 0


@dataclass(frozen=True, slots=True)
class Persist(_Replies):
    """Write the session's state to its durable file (a fork or an import, before it is handed out)."""

    reply: asyncio.Future[None]


def empty_image(sink_tokens: int) -> KVImage:
    return KVImage(0, sink_tokens, 0, 0, torch.empty(0, dtype=torch.uint8))


async def slab_op(scheduler: SchedulerActor, apply: Callable[[KVPool], Any], fed_tokens: tuple[int, ...] = (),
                  evict_for: EvictFor | None = None, session_id: str = "") -> Any:
    """Runs apply between steps; a slab that does not fit evicts idle sessions once and tries again."""
    loop = asyncio.get_running_loop()
    for attempt in (1, 2):
        reply = loop.create_future()
        scheduler.send(SlabOp(apply, reply, fed_tokens))
        try:
            return await reply
        except KVExhausted as exc:
            if attempt == 2 or evict_for is None:
                raise
            await evict_for(exc.needed_bytes, session_id)


async def copy_state(message: Fork | Export, state: SessionState, lease: KVLease | None,
                     scheduler: SchedulerActor, evict_for: EvictFor, session_id: str) -> SessionState:
    """The state a Fork or Export asks for, with its new slab or its host image."""
    if isinstance(message, Export):
        if lease is None:
            return dataclasses.replace(state, image=empty_image(scheduler.pool.sink_tokens))
        image = await slab_op(scheduler, lambda pool: read_kv(lease.kv, message.first_row))
        return dataclasses.replace(state, image=image)
    if lease is None or not lease.num_positions:
        return state  # nothing fed: the fork reserves its own slab at its first Generate
    new = await slab_op(scheduler, functools.partial(fork_kv, source=lease.kv), state.history[:state.num_fed],
                        evict_for, session_id)
    return dataclasses.replace(state, lease=new)


async def import_lease(image: KVImage, history: tuple[int, ...], scheduler: SchedulerActor,
                       evict_for: EvictFor | None) -> KVLease | None:
    """A new slab holding an imported or reloaded image (None when it holds no positions)."""
    if not image.num_positions:
        return None
    return await slab_op(scheduler, functools.partial(write_kv, image=image), history[:image.num_positions],
                         evict_for)
