"""A private asyncio event loop in a daemon thread, so blocking code can drive the async client.

grpc.aio objects must only be touched from the loop that made them; everything the synchronous
facade does goes through `run` or `call`, which execute on that loop and wait for the result.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Coroutine, TypeVar

from .errors import ClientClosedError

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "kakeya-sdk-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_forever, name=name, daemon=True)
        self.is_closed = False
        self._thread.start()

    def _run_forever(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def is_current(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs a coroutine on the loop and waits for it; an interrupt while waiting cancels it."""
        if self.is_closed or self.is_current:
            coro.close()
            if self.is_closed:
                raise ClientClosedError("the client is closed")
            raise RuntimeError("a blocking SDK call was made from the SDK's own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt in a script or notebook: don't leave the call running unseen.
            future.cancel()
            raise

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a plain function on the loop (directly when already there) and returns its result."""
        if self.is_current:
            return fn(*args, **kwargs)
        return self.run(_invoke(fn, args, kwargs))

    def stop(self) -> None:
        """Cancels what is left on the loop, then stops and joins the thread. Stopping twice is harmless."""
        if self.is_closed:
            return
        if self.is_current:
            # Reached from a finalizer on the loop itself: it cannot wait for itself.
            self.is_closed = True
            self._loop.stop()
            return
        self.run(self._drain())
        self.is_closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _drain(self) -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._loop.shutdown_asyncgens()
        await self._loop.shutdown_default_executor()


async def _invoke(fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    return fn(*args, **kwargs)
