"""The front process's engine when the engine runs in a process of its own.

It stands where the in-process Engine stands for the scheduler: `step(request)` on its own thread
(`executor`), one StepRequest in and one StepResult out. A step becomes one StepMessage, with the
KV operations the pool queued since the last one, and its reply sets each session's KV handle to
the engine's positions. When the engine ran the request's step ahead on its own, its reply is
taken instead of a round trip. An export's read-out is a round trip of its own, between steps. A
step in flight when the engine dies ends at once with EngineDead (EOF on the pipe); a death
between steps is seen through the process sentinel on the event loop.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from kakeya.runtime.common.errors import EngineDead
from kakeya.runtime.common.metrics import Metrics
from kakeya.runtime.engine.process import EngineProcess
from kakeya.runtime.engine.remote_kv import KVOps
from kakeya.runtime.engine.sampler import Sampler
from kakeya.runtime.engine.session_snapshot import KVImage, image_from_bytes
from kakeya.runtime.engine.step import RowResult, StepRequest, StepResult, StepRow
from kakeya.runtime.engine.wire import (OpsMessage, ReadKV, StepFailed, StepMessage, WireDraftRequest, WireRow,
                                        continuation)


class EngineClient:
    def __init__(self, process: EngineProcess, ops: KVOps, metrics: Metrics) -> None:
        self._process = process
        self._conn = process.conn
        self._metrics = metrics
        self.ops = ops
        ops.send_now = self._flush_soon
        ops.read = self.read
        # One thread: steps and flushes go out in order, and the event loop never blocks on the pipe.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kakeya-engine-client")
        self._samplers: dict[int, weakref.finalize] = {}  # id(sampler) -> its release, for those the engine holds
        self._loop: asyncio.AbstractEventLoop | None = None
        # The step the engine runs on its own after the last one taken (runtime/engine/step_ahead.py).
        self._next: tuple[WireRow, ...] | None = None
        self._taken = metrics.engine_steps_ahead.labels(outcome="taken")
        self._undone = metrics.engine_steps_ahead.labels(outcome="undone")

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def is_alive(self) -> bool:
        return self._process.process.exitcode is None

    def step(self, request: StepRequest) -> StepResult:
        """On the client's thread: the step the engine ran ahead, when the request is that step;
        else one round trip with the request as the plan."""
        created: list[tuple] = []
        rows = tuple(self._wire(row, created) for row in request.rows)
        sent = time.perf_counter()
        try:
            if rows == self._next and not created:
                reply = self._take_ahead()
            else:
                self._conn.send(StepMessage(self.ops.drain() + tuple(created), rows))
                reply = self._skip_ahead(self._conn.recv())
        except (EOFError, OSError) as exc:
            raise EngineDead(f"the engine process died (exit code {self._exit_code()})") from exc
        if isinstance(reply, StepFailed):
            raise EngineDead(f"the engine failed: {reply.error}")
        self._record(reply, time.perf_counter() - sent)
        self._next = continuation(rows, reply.rows) if reply.runs_ahead else None
        results = []
        for row, out in zip(request.rows, reply.rows):
            row.kv.set_state(out.num_positions, out.window_start)
            if out.draft_positions >= 0:
                row.kv.draft.set_state(out.draft_positions, out.draft_window_start)
            results.append(RowResult(out.tokens, out.num_drafted, out.num_accepted, out.stop, out.num_positions))
        return StepResult(tuple(results))

    def read(self, kv_id: int, first_row: int) -> KVImage:
        """A slab's stored rows, read in the engine after the queued KV operations. Called by the
        scheduler between steps (as a local slab's copy waits for the model thread), it waits for
        the client's thread, which keeps the pipe's messages in order."""
        return self.executor.submit(self._read, kv_id, first_row).result()

    def _read(self, kv_id: int, first_row: int) -> KVImage:
        self._next = None  # the engine undoes what it ran ahead before it reads
        try:
            self._conn.send(ReadKV(self.ops.drain(), kv_id, first_row))
            reply = self._skip_ahead(self._conn.recv())
        except (EOFError, OSError) as exc:
            raise EngineDead(f"the engine process died (exit code {self._exit_code()})") from exc
        if isinstance(reply, StepFailed):
            raise EngineDead(f"the engine failed: {reply.error}")
        return image_from_bytes(*reply)

    def _skip_ahead(self, reply):
        """Replies to steps the engine ran on its own that the front did not take: undone there."""
        while getattr(reply, "ahead", False):
            self._undone.inc()
            reply = self._conn.recv()
        return reply

    def _take_ahead(self):
        """The reply to the step the engine ran on its own; the engine learns it was taken with the
        next message (KV operations that ride on it make the engine plan-bound again)."""
        reply = self._conn.recv()
        if isinstance(reply, StepFailed):
            return reply
        assert reply.ahead, "the engine answered a step it was not asked for"
        self._taken.inc()
        ops = self.ops.drain()
        self._conn.send(OpsMessage(ops, 1))
        if ops:
            reply = reply._replace(runs_ahead=False)  # the engine undoes what it ran after this step
        return reply

    def _wire(self, row: StepRow, created: list[tuple]) -> WireRow:
        request = row.draft_request
        draft_request = None
        if request is not None:
            draft_request = WireDraftRequest(request.tokens, request.num_draft, self._key(request.sampler, created))
        return WireRow(row.kv.kv_id, row.tokens, self._key(row.sampler, created), row.draft, draft_request, row.stop)

    def _key(self, sampler: Sampler | None, created: list[tuple]) -> int | None:
        """The sampler's key in the engine, created there with this step when it is new. The
        engine's copy keeps its own random stream for the request's whole life."""
        if sampler is None:
            return None
        key = id(sampler)
        if key not in self._samplers:
            created.append(("sampler", key, sampler.params))
            self._samplers[key] = weakref.finalize(sampler, self._forget_sampler, key)
        return key

    def _forget_sampler(self, key: int) -> None:
        # Queued before the key is dropped here, so a new sampler at the same id is created after.
        self.ops.append(("forget_sampler", key))
        self._samplers.pop(key, None)

    def _record(self, reply, waited: float) -> None:
        m = self._metrics
        m.engine_step_duration.observe(reply.step_s)
        m.front_engine_wait.observe(waited)
        if reply.waited_s >= 0:
            m.engine_front_wait.observe(reply.waited_s)
        for outcome, count in reply.run_ahead:
            m.run_ahead_steps.labels(outcome=outcome).inc(count)

    def _flush_soon(self) -> None:
        """Frees and imported rows go at once rather than with the next step, which may be long in coming."""
        if not self._process.stopping:
            self.executor.submit(self._flush)

    def _flush(self) -> None:
        ops = self.ops.drain()
        if ops:
            self._next = None  # the engine undoes what it ran ahead before it applies them
            try:
                self._conn.send(OpsMessage(ops))
            except OSError:
                pass  # the engine is gone; its death is reported through the sentinel

    def _exit_code(self) -> int | None:
        self._process.process.join(1.0)  # EOF comes as the child dies; let its exit be reaped
        return self._process.process.exitcode

    def watch(self, on_death: Callable[[BaseException], None]) -> None:
        """On the event loop: calls on_death once the engine process exits without being stopped."""
        self._loop = asyncio.get_running_loop()
        sentinel = self._process.process.sentinel

        def exited() -> None:
            self._loop.remove_reader(sentinel)
            if not self._process.stopping:
                on_death(EngineDead(f"the engine process exited with code {self._exit_code()}"))

        self._loop.add_reader(sentinel, exited)

    def shutdown(self) -> None:
        self._process.stopping = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._process.process.sentinel)
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._process.stop()
