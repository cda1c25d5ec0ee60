"""The host of one model: model, KV pool, engine, scheduler and registry, started and stopped as one."""

from __future__ import annotations

import functools
import importlib.metadata
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import structlog

from kakeya.actors.registry import SessionRegistry
from kakeya.actors.scheduler import SchedulerActor
from kakeya.actors.session_rules import SessionRules
from kakeya.actors.speculator import Speculator

from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.engine.blas_probe import warn_if_row_dependent
from kakeya.runtime.common.config import RuntimeConfig
from kakeya.runtime.engine.draft import DraftRunner, load_draft
from kakeya.runtime.engine.engine import Engine
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.forward.session_kv import KVShape, slab_dtype
from kakeya.runtime.common.metrics import Metrics
from kakeya.runtime.engine.loader import load_model
from kakeya.runtime.forward.loaded_model import LoadedModel
from kakeya.runtime.engine.runner import ModelRunner, model_thread

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
    scheduler and the session registry, started and stopped as one."""

    def __init__(self, config: RuntimeConfig, loaded: LoadedModel,
                 on_engine_death: Callable[[BaseException], None] | None = None,
                 executor: ThreadPoolExecutor | None = None, draft: LoadedModel | None = None) -> None:
        engine = config.engine
        self.config = config
        self.loaded = loaded
        self.deterministic = engine.deterministic if engine.deterministic is not None else loaded.device.type == "cpu"
        self.draft = draft or load_draft(config.speculative, config.model, loaded, ATTENTION_NAME)
        kv_dtype = slab_dtype(engine.kv_dtype, loaded.dtype, loaded.device, engine.is_bounded)
        shape = KVShape(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, kv_dtype, loaded.device)
        draft_shape = None
        if self.draft is not None:
            d = self.draft
            draft_shape = KVShape(d.num_layers, d.num_kv_heads, d.head_dim, d.dtype, d.device)
        self.pool = KVPool(shape, engine.kv_budget_bytes, engine.kv_block_tokens, engine.sink_tokens,
                           engine.window_tokens, engine.prefill_chunk_tokens, draft_shape)
        runner_options = dict(cuda_graphs=engine.cuda_graphs, cuda_fusion=engine.cuda_fusion,
                              bounded=engine.is_bounded, cpu_packed_linears=engine.cpu_packed_linears,
                              cpu_decoder=engine.cpu_decoder)
        # Speculative steps feed drafts, which a launched-ahead plain decode step never matches.
        run_ahead = engine.cuda_run_ahead and not config.speculative.is_enabled
        self.metrics = Metrics()
        outcomes = self.metrics.run_ahead_steps
        # The draft model's slabs keep its own dtype: they are small, and its tokens are only proposals.
        self.runner = ModelRunner(loaded, self.deterministic, executor, run_ahead=run_ahead, kv_dtype=kv_dtype,
                                  on_run_ahead=lambda outcome: outcomes.labels(outcome=outcome).inc(),
                                  **runner_options)
        self.draft_runner = None
        if self.draft is not None:
            self.draft_runner = DraftRunner(self.draft, self.deterministic, self.runner.executor, **runner_options)
        self.engine = Engine(self.runner, self.draft_runner)
        # The scheduler alone writes it; kept here so its proposer's figures can be read.
        self.speculator = Speculator(config.speculative, self.draft_runner is not None, self.metrics,
                                     engine.prefill_chunk_tokens)
        self.scheduler = SchedulerActor(self.engine, self.speculator, self.pool, self.metrics, engine.prefill_chunk_tokens,
                                        engine.max_step_tokens, engine.mailbox_size,
                                        engine.consumer_stall_timeout_s,
                                        on_crash=on_engine_death or _exit_on_engine_death)
        self.rules = SessionRules(config.limits, loaded.vocab_size, loaded.max_context_tokens,
                                  engine.sink_tokens, engine.window_tokens)
        self.registry = SessionRegistry(self.rules, self.scheduler, self.metrics)

    @classmethod
    def load(cls, config: RuntimeConfig, **kwargs) -> "Host":
        """Loads the model on the model thread (blocking: call it off the event loop) and builds the runtime."""
        executor = model_thread()
        loaded = executor.submit(load_model, config.model, ATTENTION_NAME).result()
        draft = executor.submit(load_draft, config.speculative, config.model, loaded, ATTENTION_NAME).result()
        runtime = cls(config, loaded, executor=executor, draft=draft, **kwargs)
        # CUDA: compile and capture the decode graphs now rather than inside the first requests.
        executor.submit(runtime.engine.warm_up, config.engine.max_step_tokens).result()
        if runtime.deterministic and loaded.device.type == "cpu" and runtime.runner.packed is None:
            executor.submit(warn_if_row_dependent, loaded.model).result()
        return runtime

    def start(self) -> None:
        self.scheduler.start()
        self.registry.start()
        log.info("runtime_started", deterministic=self.deterministic, kv_budget_bytes=self.pool.budget_bytes,
                 kv_dtype=str(self.pool.shape.dtype).removeprefix("torch."), speculative=self.config.speculative.mode,
                 draft_model=self.draft.model_id if self.draft is not None else None)

    async def stop(self) -> None:
        await self.registry.close_all()
        await self.scheduler.stop()
        self.engine.shutdown()

    def info(self) -> dict[str, InfoValue]:
        """What GetRuntimeInfo reports, keyed by the reply's field names. The proto is the one list of
        fields: the servicer refuses a key set that differs from it, so a field added there needs a
        value here (unit/test_info_replies.py catches a miss before any client sees a default)."""
        stats, limits, loaded = self.scheduler.stats, self.config.limits, self.loaded
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
            window_tokens=self.pool.window_tokens,
            deterministic=self.deterministic,
            forward_count=stats.num_forwards,
            max_sessions_per_forward=stats.max_sessions_per_forward,
            mean_sessions_per_forward=stats.mean_sessions_per_forward,
            cache_invariant_inv1_violations=self.registry.violations("inv1"),
            cache_invariant_inv2_violations=self.registry.violations("inv2"),
            speculative_mode=self.config.speculative.mode,
            num_draft_tokens=self.config.speculative.num_draft_tokens if self.config.speculative.is_enabled else 0,
            draft_model_id=self.draft.model_id if self.draft is not None else "",
        )

    def counter(self, name: str, **labels: str) -> int:
        """The current value of one exported series (0 before its first increment). Collects the
        whole registry (~0.7 ms): for tests and tools, not for paths that serve requests."""
        return int(self.metrics.registry.get_sample_value(name, labels) or 0)


def _exit_on_engine_death(exc: BaseException) -> None:
    log.critical("engine_dead", error=repr(exc))
    # The scheduler is the only path to the device: without it no request can succeed.
    sys.exit(70)
