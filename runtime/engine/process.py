"""The engine process: the model, KV memory and the step loop in a process of their own.

`kakeya serve` starts one per device with the `spawn` start method (CUDA cannot be used in a
forked child) and talks to it over one duplex pipe (multiprocessing.connection): one StepMessage
in and one StepReply out per step (runtime/engine/wire.py). The model is loaded in the child,
which answers EngineReady with the facts GetRuntimeInfo reports, or LoadFailed.

Faults: the front learns of the child's death from the pipe (a step in flight ends with EOF at
once) and from the process sentinel (runtime/engine/client.py). The child learns of the front's
death from the same pipe (EOF on its next read), from PR_SET_PDEATHSIG on Linux, and from a
thread that checks its parent id, so no engine outlives its server holding the device.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Callable

import structlog

from kakeya.runtime.common.config import RuntimeConfig, cpu_threads
from kakeya.runtime.common.errors import EngineDead, FailedPrecondition
from kakeya.runtime.engine.assembly import build_engine
from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.engine.blas_probe import warn_if_row_dependent
from kakeya.runtime.engine.draft import load_draft
from kakeya.runtime.engine.loader import load_model
from kakeya.runtime.engine.service import EngineService
from kakeya.runtime.engine.wire import EngineReady, LoadFailed, OpsMessage, ReadKV, StepFailed, StepMessage

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1
_PARENT_POLL_S = 0.25
STOP_TIMEOUT_S = 10.0


class EngineProcess:
    """The front's handle on an engine process: started at once, ready once the model is loaded."""

    def __init__(self, config: RuntimeConfig, configure_logs: Callable[[], None] | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        # PR_SET_PDEATHSIG fires when the thread that started the child ends: set only from the
        # main thread, which lives as long as the process.
        pdeathsig = threading.current_thread() is threading.main_thread()
        self.process = context.Process(target=engine_main, name="kakeya-engine",
                                       args=(child, config, os.getpid(), pdeathsig, configure_logs))
        self.process.start()
        child.close()  # the child's end lives in the child only: its death is EOF here
        self.stopping = False
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> EngineReady:
        """Blocks until the child has loaded the model and warmed up; FailedPrecondition with the
        child's reason when loading failed, EngineDead when it died."""
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(STOP_TIMEOUT_S)
            raise EngineDead(f"the engine process exited with code {self.process.exitcode} while loading") from None
        if isinstance(message, LoadFailed):
            self.stop()
            raise FailedPrecondition(message.error)
        return message

    def kill(self) -> None:
        self.stopping = True
        self.process.kill()

    def stop(self) -> None:
        """Asks the child to exit and waits for it; kills it when it does not."""
        self.stopping = True
        if self.process.pid is None or self.process.exitcode is not None:
            return
        try:
            self.conn.send(None)
        except OSError:
            pass  # already gone
        self.process.join(STOP_TIMEOUT_S)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(STOP_TIMEOUT_S)
        self.conn.close()


def engine_main(conn: Connection, config: RuntimeConfig, parent_pid: int, pdeathsig: bool,
                configure_logs: Callable[[], None] | None) -> None:
    """The child's entry point: load, answer ready, then serve steps until the front goes away."""
    _die_with_parent(parent_pid, pdeathsig)
    if configure_logs is not None:
        configure_logs()
    threads = cpu_threads()
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        service, facts = _load(config)
    except Exception as exc:  # noqa: BLE001 - any loading failure goes back to the front as its message
        conn.send(LoadFailed(str(exc)))
        return
    # The model and the modules loading built live as long as the process: out of the cyclic
    # collector's reach, whose full collections would otherwise walk them between steps.
    gc.collect()
    gc.freeze()
    conn.send(EngineReady(facts, os.getpid()))
    log.info("engine_process_ready", pid=os.getpid(), device=str(facts.model.device),
             gc_frozen_objects=gc.get_freeze_count())
    sys.exit(_serve(conn, service))


def _load(config: RuntimeConfig):
    loaded = load_model(config.model, ATTENTION_NAME)
    draft = load_draft(config.speculative, config.model, loaded, ATTENTION_NAME)
    outcomes: Counter[str] = Counter()
    local = build_engine(config, loaded, draft, None, lambda outcome: outcomes.update((outcome,)))
    local.engine.warm_up(config.engine.max_step_tokens)
    if local.facts.deterministic and loaded.device.type == "cpu" and local.runner.packed is None:
        warn_if_row_dependent(loaded.model)
    # Speculative rows feed drafts, which a continuation never does; bounded slabs compact, which a
    # rewind cannot undo.
    step_ahead = config.engine.engine_step_ahead and not config.speculative.is_enabled and not local.facts.kept_window
    service = EngineService(local.engine, local.facts, config.engine.sink_tokens, local.facts.kept_window,
                            outcomes, step_ahead)
    return service, local.facts


def _serve(conn: Connection, service) -> int:
    """Steps until the front sends None or goes away (0), or a step fails (70). Between the
    front's plans it steps greedy decode rows on its own (runtime/engine/step_ahead.py)."""
    waited_s = 0.0  # time blocked on the front since the last step, while rows were running
    while True:
        if service.ahead.can_step and not conn.poll():
            reply = _step(conn, lambda: service.step_ahead(waited_s))
        else:
            blocked = time.perf_counter()
            try:
                message = conn.recv()
            except (EOFError, OSError):
                log.warning("engine_front_gone")
                return 0
            if service.busy:
                waited_s += time.perf_counter() - blocked
            if message is None:
                return 0
            if isinstance(message, OpsMessage):
                service.ahead.taken(message.taken)
                if message.ops:
                    service.ahead.rewind()  # the front plans again after KV operations
                    if _step(conn, lambda: service.apply(message.ops), reply=False) is None:
                        return 70
                continue
            if isinstance(message, ReadKV):
                if _step(conn, lambda: service.read(message)) is None:
                    return 70
                continue
            if not isinstance(message, StepMessage):
                raise TypeError(f"the engine got an unknown message {type(message).__name__}")
            reply = _step(conn, lambda: service.step(message, waited_s if service.busy else -1.0))
        if reply is None:
            return 70
        waited_s = 0.0


def _step(conn: Connection, run, reply: bool = True):
    """Runs a step (or KV operations, which have no reply); None when it raised: a device error
    (out of memory, a CUDA fault) ends this engine, and the front learns why."""
    try:
        result = run()
    except Exception as exc:  # noqa: BLE001
        log.critical("engine_step_failed", error=repr(exc))
        conn.send(StepFailed(repr(exc)))
        return None
    if reply:
        conn.send(result)
    return True if result is None else result


def _die_with_parent(parent_pid: int, pdeathsig: bool) -> None:
    """The engine never outlives the front: SIGKILL when the parent dies (Linux), and a thread
    that exits when the parent id changes (everywhere; the child is then reparented)."""
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the watcher thread below still ends the process
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before this line

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="kakeya-parent-watch", daemon=True).start()
