"""The actor base: one task handles messages one at a time in order, a full mailbox answers
Overloaded at once, stop() drains then ends the task, and a crash reaches on_crash while
whatever is still queued is failed rather than left waiting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from kakeya.actors.base import Actor
from kakeya.runtime.common.errors import Overloaded, SessionNotFound

TIMEOUT_S = 5.0


class Ask:
    """A request with a reply, failed by `reject` when the actor is gone (as the real messages are)."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def reject(self, error: BaseException) -> None:
        if not self.reply.done():
            self.reply.set_exception(error)


class Hold:
    """Blocks the actor inside `handle` until released; `crash` makes the handler raise afterwards."""

    def __init__(self, crash: bool = False) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.crash = crash

    async def wait_entered(self) -> None:
        await asyncio.wait_for(self.entered.wait(), TIMEOUT_S)


class Recorder(Actor):
    name = "recorder"

    def __init__(self, mailbox_size: int = 8, on_crash=None) -> None:
        super().__init__(mailbox_size, on_crash)
        self.handled: list[Any] = []
        self.active = 0
        self.max_active = 0
        self.log_context: list[dict] = []

    async def handle(self, message: Any) -> None:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            self.log_context.append(structlog.contextvars.get_contextvars())
            if isinstance(message, Hold):
                message.entered.set()
                await message.release.wait()
                if message.crash:
                    raise RuntimeError("boom")
            self.handled.append(message.value if isinstance(message, Ask) else message)
            if isinstance(message, Ask):
                message.reply.set_result(message.value)
        finally:
            self.active -= 1


async def stop(actor: Actor) -> None:
    await asyncio.wait_for(actor.stop(), TIMEOUT_S)


async def test_messages_are_handled_one_at_a_time_in_arrival_order():
    actor = Recorder()
    actor.start()
    hold = Hold()
    actor.send(hold)
    for value in range(5):
        actor.send(Ask(value))
    await hold.wait_entered()
    assert actor.handled == []  # nothing overtakes a message still being handled
    assert not actor.is_idle
    hold.release.set()
    await stop(actor)
    assert actor.handled == [hold, 0, 1, 2, 3, 4]
    assert actor.max_active == 1
    assert actor.is_idle


async def test_a_full_mailbox_answers_overloaded_at_once():
    actor = Recorder(mailbox_size=2)
    actor.start()
    hold = Hold()
    actor.send(hold)
    await hold.wait_entered()  # the mailbox is empty again, the actor busy
    first, second = Ask(1), Ask(2)
    actor.send(first)
    actor.send(second)
    third = Ask(3)
    with pytest.raises(Overloaded, match="recorder mailbox is full"):
        actor.send(third)  # synchronous: the caller never waits for room
    hold.release.set()
    assert await asyncio.wait_for(asyncio.gather(first.reply, second.reply), TIMEOUT_S) == [1, 2]
    await stop(actor)
    assert actor.handled == [hold, 1, 2]
    assert not third.reply.done()  # refused, never queued


async def test_an_unstarted_actor_queues_up_to_its_mailbox_size():
    actor = Recorder(mailbox_size=1)
    actor.send(Ask(1))
    assert not actor.is_idle and not actor.is_alive
    with pytest.raises(Overloaded):
        actor.send(Ask(2))
    await stop(actor)  # never started: nothing to wait for
    actor.start()
    await stop(actor)
    assert actor.handled == [1]


async def test_send_wait_waits_for_room_instead_of_failing():
    actor = Recorder(mailbox_size=1)
    actor.start()
    hold = Hold()
    actor.send(hold)
    await hold.wait_entered()
    queued, waiting = Ask("queued"), Ask("waiting")
    actor.send(queued)
    sender = asyncio.ensure_future(actor.send_wait(waiting))
    asyncio.get_running_loop().call_soon(hold.release.set)  # runs after the sender found no room
    await asyncio.wait_for(sender, TIMEOUT_S)
    assert await asyncio.wait_for(waiting.reply, TIMEOUT_S) == "waiting"
    await stop(actor)
    assert actor.handled == [hold, "queued", "waiting"]


async def test_stop_handles_what_is_queued_then_ends_the_task():
    actor = Recorder()
    actor.start()
    asks = [Ask(value) for value in range(3)]
    for ask in asks:
        actor.send(ask)
    assert actor.is_alive
    await stop(actor)
    assert not actor.is_alive
    assert actor.handled == [0, 1, 2]
    assert all(ask.reply.result() == ask.value for ask in asks)
    with pytest.raises(SessionNotFound, match="recorder is closed"):
        actor.send(Ask(3))
    with pytest.raises(SessionNotFound):
        await asyncio.wait_for(actor.send_wait(Ask(4)), TIMEOUT_S)
    await stop(actor)  # a second stop returns at once
    assert actor.handled == [0, 1, 2]


async def test_a_caller_giving_up_on_stop_does_not_cancel_the_actor():
    actor = Recorder()
    actor.start()
    hold, after = Hold(), Ask("after")
    actor.send(hold)
    actor.send(after)
    await hold.wait_entered()
    # The actor cannot finish while held, so this wait times out whatever the machine's speed.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(actor.stop(), 0.05)
    assert actor.is_alive and actor.is_stopping
    hold.release.set()
    assert await asyncio.wait_for(after.reply, TIMEOUT_S) == "after"
    await stop(actor)
    assert not actor.is_alive
    assert actor.handled == [hold, "after"]


async def test_a_crash_reaches_on_crash_and_fails_what_is_queued():
    crashes: list[BaseException] = []
    actor = Recorder(on_crash=crashes.append)
    actor.start()
    hold = Hold(crash=True)
    actor.send(hold)
    queued = Ask("queued")
    actor.send(queued)
    await hold.wait_entered()
    hold.release.set()
    with pytest.raises(SessionNotFound, match="recorder is closed"):
        await asyncio.wait_for(queued.reply, TIMEOUT_S)
    assert [repr(exc) for exc in crashes] == [repr(RuntimeError("boom"))]
    assert not actor.is_alive
    assert actor.is_stopping
    with pytest.raises(SessionNotFound):
        actor.send(Ask("late"))
    await stop(actor)  # returns at once: the task is over
    assert actor.handled == []


async def test_a_crash_in_an_overridden_run_loop_reaches_on_crash():
    class Broken(Actor):
        async def run_loop(self) -> None:
            await self.next_message()
            raise ValueError("step failed")

    crashes: list[BaseException] = []
    actor = Broken(4, on_crash=crashes.append)
    actor.start()
    actor.send("go")
    queued = Ask("queued")
    actor.send(queued)
    with pytest.raises(SessionNotFound):
        await asyncio.wait_for(queued.reply, TIMEOUT_S)
    assert len(crashes) == 1 and isinstance(crashes[0], ValueError)
    await stop(actor)
    assert not actor.is_alive


async def test_a_crash_without_on_crash_still_ends_the_actor_quietly():
    actor = Recorder()
    actor.start()
    hold = Hold(crash=True)
    actor.send(hold)
    queued = Ask("queued")
    actor.send(queued)
    hold.release.set()
    with pytest.raises(SessionNotFound):
        await asyncio.wait_for(queued.reply, TIMEOUT_S)
    await stop(actor)
    assert not actor.is_alive


async def test_the_actor_task_drops_its_creators_log_context():
    structlog.contextvars.bind_contextvars(request_id="creator")
    try:
        actor = Recorder()
        actor.start()
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    actor.send(Ask(1))
    await stop(actor)
    assert actor.log_context == [{}]


async def test_a_sender_waiting_for_room_is_failed_when_the_actor_crashes():
    actor = Recorder(mailbox_size=1, on_crash=lambda exc: None)
    actor.start()
    hold = Hold(crash=True)
    actor.send(hold)
    await hold.wait_entered()
    queued, waiting = Ask("queued"), Ask("waiting")
    actor.send(queued)
    sender = asyncio.ensure_future(actor.send_wait(waiting))
    asyncio.get_running_loop().call_soon(hold.release.set)  # runs after the sender found no room
    with pytest.raises(SessionNotFound):
        await asyncio.wait_for(queued.reply, TIMEOUT_S)
    try:
        await asyncio.wait_for(sender, TIMEOUT_S)
    except SessionNotFound:
        return  # refused outright: as good as a rejected reply
    # Accepted: then the reply must fail, not wait forever.
    with pytest.raises(SessionNotFound):
        await asyncio.wait_for(waiting.reply, 0.5)


async def test_a_sender_waiting_for_room_behind_stop_is_failed():
    actor = Recorder(mailbox_size=1)
    actor.start()
    hold = Hold()
    actor.send(hold)
    await hold.wait_entered()
    queued, waiting = Ask("queued"), Ask("waiting")
    actor.send(queued)
    stopper = asyncio.ensure_future(actor.stop())  # waits for room for its stop marker
    sender = asyncio.ensure_future(actor.send_wait(waiting))  # waits behind it
    asyncio.get_running_loop().call_soon(hold.release.set)
    assert await asyncio.wait_for(queued.reply, TIMEOUT_S) == "queued"
    await asyncio.wait_for(stopper, TIMEOUT_S)
    assert not actor.is_alive
    try:
        await asyncio.wait_for(sender, TIMEOUT_S)
    except SessionNotFound:
        return
    with pytest.raises(SessionNotFound):
        await asyncio.wait_for(waiting.reply, 0.5)
