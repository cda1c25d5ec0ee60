"""The host of one model: model, KV pool, engine, scheduler and registry, started and stopped as one."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import structlog

from kakeya.actors.registry import SessionRegistry
from kakeya.actors.scheduler import SchedulerActor
from kakeya.actors.session_rules import SessionRules
from kakeya.actors.session_store import SessionStore
from kakeya.actors.speculator import Speculator

from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.engine.blas_probe import warn_if_row_dependent
from kakeya.runtime.common.config import RuntimeConfig
from kakeya.runtime.engine.assembly import build_engine
from kakeya.runtime.engine.client import EngineClient
from kakeya.runtime.engine.draft import load_draft
from kakeya.runtime.engine.kv_pool import KVPool, inline, local_kv
from kakeya.runtime.engine.process import EngineProcess
from kakeya.runtime.engine.remote_kv import KVOps, remote_kv_factory
from kakeya.runtime.common.metrics import Metrics
from kakeya.runtime.engine.loader import load_model
from kakeya.runtime.forward.loaded_model import LoadedModel
from kakeya.runtime.forward.session_kv import KVShape
from kakeya.runtime.engine.runner import ModelRunner, model_thread, run_on

log = structlog.get_logger(__name__)


@functools.cache
def package_version() -> str:
    # Cached: a metadata lookup scans sys.path (~0.5 ms), and GetRuntimeInfo runs on the event loop.
    try:
        return importlib.metadata.version("kakeya")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


# One value GetRuntimeInfo reports: a scalar, or a tuple for a repeated field.
InfoValue = int | float | str | bool | tuple[int, ...]


class Host:
    """Hosts one model: loads it, and assembles the KV pool, the engine on its model thread, the
    scheduler and the session registry, started and stopped as one.

    With `engine_process`, the model, its slabs and the step loop live in that process instead
    (runtime/engine/process.py); `loaded` is then None and the host keeps the model's facts, a KV
    pool of handles and an EngineClient where the engine would be."""

    def __init__(self, config: RuntimeConfig, loaded: LoadedModel | None,
                 on_engine_death: Callable[[BaseException], None] | None = None,
                 executor: ThreadPoolExecutor | None = None, draft: LoadedModel | None = None,
                 engine_process: EngineProcess | None = None) -> None:
        engine = config.engine
        self.config = config
        self.metrics = Metrics()
        self._on_engine_death = on_engine_death or _exit_on_engine_death
        self._engine_died = False
        self.runner: ModelRunner | None = None
        self.client: EngineClient | None = None
        kv_factory = local_kv
        if engine_process is None:
            draft = draft or load_draft(config.speculative, config.model, loaded, ATTENTION_NAME)
            outcomes = self.metrics.run_ahead_steps
            local = build_engine(config, loaded, draft, executor, lambda outcome: outcomes.labels(outcome=outcome).inc())
            self.runner, self.engine, facts = local.runner, local.engine, local.facts
        else:
            facts = engine_process.wait_ready().facts
            ops = KVOps()
            kv_factory = remote_kv_factory(ops)
            self.engine = self.client = EngineClient(engine_process, ops, self.metrics)
        self.loaded = loaded if loaded is not None else facts.model
        self.deterministic = facts.deterministic
        self.draft_model_id = facts.draft_model_id
        self.fingerprint = facts.fingerprint  # what exported and durable sessions are bound to
        self.paths = facts.paths
        self.pool = KVPool(facts.kv_shape, engine.kv_budget_bytes, engine.kv_block_tokens, engine.sink_tokens,
                           facts.kept_window, engine.prefill_chunk_tokens, facts.draft_shape, kv_factory,
                           self._model_thread_work(facts.kv_shape))
        # The scheduler alone writes it; kept here so its proposer's figures can be read.
        self.speculator = Speculator(config.speculative, facts.draft_shape is not None, self.metrics,
                                     engine.prefill_chunk_tokens)
        self.scheduler = SchedulerActor(self.engine, self.speculator, self.pool, self.metrics, engine.prefill_chunk_tokens,
                                        engine.max_step_tokens, engine.mailbox_size,
                                        engine.consumer_stall_timeout_s, on_crash=self._engine_death)
        self.rules = SessionRules(config.limits, self.loaded.vocab_size, self.loaded.max_context_tokens,
                                  engine.sink_tokens, engine.window_tokens)
        self.registry = SessionRegistry(self.rules, self.scheduler, self.metrics, self._store(facts.kv_shape))

    def _model_thread_work(self, shape: KVShape) -> Callable[[Callable[[], Any]], Any]:
        """How the pool runs its slab copies: on the model thread where slabs are in CPU memory
        (kv_pool.KVPool), between steps, while that thread is idle; in place elsewhere (device
        copies, or the engine process's handles, whose copies the engine makes)."""
        if self.runner is None or shape.device.type != "cpu":
            return inline
        return run_on(self.runner.executor)

    def _store(self, shape: KVShape) -> SessionStore | None:
        """The durable session directory's store, bound to this model and KV layout."""
        if self.config.limits.session_dir is None:
            return None
        lanes = shape.num_layers * 2 * shape.num_kv_heads
        settings = dict(kv_dtype=str(shape.dtype).removeprefix("torch."), sink_tokens=self.pool.sink_tokens,
                        window_tokens=self.pool.window_tokens, lanes=lanes,
                        row_bytes=shape.bytes_per_token // lanes)
        return SessionStore(self.config.limits.session_dir, self.fingerprint, settings, self.scheduler, self.metrics)

    @classmethod
    def load(cls, config: RuntimeConfig, engine_process: EngineProcess | None = None, **kwargs) -> "Host":
        """Loads the model (blocking: call it off the event loop) and builds the runtime: on the
        model thread, or in `engine_process`, whose loading this waits for."""
        if engine_process is not None:
            return cls(config, None, engine_process=engine_process, **kwargs)
        executor = model_thread()
        loaded = executor.submit(load_model, config.model, ATTENTION_NAME).result()
        draft = executor.submit(load_draft, config.speculative, config.model, loaded, ATTENTION_NAME).result()
        runtime = cls(config, loaded, executor=executor, draft=draft, **kwargs)
        # CUDA: compile and capture the decode graphs now rather than inside the first requests.
        executor.submit(runtime.engine.warm_up, config.engine.max_step_tokens).result()
        if runtime.deterministic and loaded.device.type == "cpu" and runtime.runner.packed is None:
            executor.submit(warn_if_row_dependent, loaded.model).result()
        return runtime

    def _engine_death(self, exc: BaseException) -> None:
        """Reported once: a dead engine process is seen both by the step in flight and by its sentinel."""
        if not self._engine_died:
            self._engine_died = True
            self._on_engine_death(exc)

    @property
    def engine_pid(self) -> int:
        """The process that runs the model: this one, or the engine process."""
        return self.client.pid if self.client is not None else os.getpid()

    @property
    def is_alive(self) -> bool:
        """The scheduler runs and the engine, where it has a process of its own, too."""
        return self.scheduler.is_alive and (self.client is None or self.client.is_alive)

    def start(self) -> None:
        """On the event loop."""
        if self.client is not None:
            self.client.watch(self._engine_death)
        self.scheduler.start()
        self.registry.start()
        log.info("runtime_started", deterministic=self.deterministic, kv_budget_bytes=self.pool.budget_bytes,
                 kv_dtype=str(self.pool.shape.dtype).removeprefix("torch."), speculative=self.config.speculative.mode,
                 draft_model=self.draft_model_id, engine_pid=self.engine_pid)

    async def stop(self) -> None:
        await self.registry.close_all()
        await self.scheduler.stop()
        self.engine.shutdown()

    def info(self) -> dict[str, InfoValue]:
        """What GetRuntimeInfo reports, keyed by the reply's field names. The proto is the one list of
        fields: the servicer refuses a key set that differs from it, so a field added there needs a
        value here (unit/test_info_replies.py catches a miss before any client sees a default)."""
        stats, limits, loaded = self.scheduler.stats, self.config.limits, self.loaded
        engine_window = self.config.engine.window_tokens  # bounded mode's, not a windowed model's own
        return dict(
            model_id=loaded.model_id,
            vocab_size=loaded.vocab_size,
            default_eos_token_ids=loaded.eos_token_ids,
            device=str(loaded.device),
            dtype=str(loaded.dtype).removeprefix("torch."),
            version=package_version(),
            max_context_tokens=loaded.max_context_tokens,
            max_sessions=limits.max_sessions,
            kv_budget_bytes=self.pool.budget_bytes,
            kv_used_bytes=self.pool.used_bytes,
            kv_bytes_per_token=self.pool.shape.bytes_per_token,
            active_sessions=self.registry.num_active,
            max_append_tokens=limits.max_append_tokens,
            max_generate_tokens=limits.max_generate_tokens,
            sink_tokens=self.pool.sink_tokens,
            window_tokens=engine_window,
            deterministic=self.deterministic,
            forward_count=stats.num_forwards,
            max_sessions_per_forward=stats.max_sessions_per_forward,
            mean_sessions_per_forward=stats.mean_sessions_per_forward,
            cache_invariant_inv1_violations=self.registry.violations("inv1"),
            cache_invariant_inv2_violations=self.registry.violations("inv2"),
            speculative_mode=self.config.speculative.mode,
            num_draft_tokens=self.config.speculative.num_draft_tokens if self.config.speculative.is_enabled else 0,
            draft_model_id=self.draft_model_id or "",
            **self.paths,
        )

    def counter(self, name: str, **labels: str) -> int:
        """The current value of one exported series (0 before its first increment). Collects the
        whole registry (~0.7 ms): for tests and tools, not for paths that serve requests."""
        return int(self.metrics.registry.get_sample_value(name, labels) or 0)


def _exit_on_engine_death(exc: BaseException) -> None:
    log.critical("engine_dead", error=repr(exc))
    # The scheduler is the only path to the device: without it no request can succeed.
    sys.exit(70)
