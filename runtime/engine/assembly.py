"""How an engine is put together from a loaded model and the config: in the server's process, or
in an engine process of its own (runtime/engine/process.py), the same way in both."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from kakeya.runtime.common.config import RuntimeConfig
from kakeya.runtime.engine import forward_path
from kakeya.runtime.engine.draft import DraftRunner
from kakeya.runtime.engine.engine import Engine
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.session_snapshot import model_fingerprint
from kakeya.runtime.forward.loaded_model import LoadedModel, ModelFacts
from kakeya.runtime.forward.session_kv import KVShape, slab_dtype


@dataclass(frozen=True, slots=True)
class EngineFacts:
    """What an assembled engine tells its host: the model's facts, the KV slabs' shapes, and modes."""

    model: ModelFacts
    kv_shape: KVShape
    draft_shape: KVShape | None
    draft_model_id: str | None
    deterministic: bool
    # Positions a session keeps: bounded mode's window, or the widest layer window of a model
    # whose every layer has one (forward_path.kept_window); 0 keeps the whole history.
    kept_window: int
    paths: dict[str, str]  # GetRuntimeInfo's words for the forward in use (ModelRunner.paths)
    fingerprint: str  # the model and KV layout exported and durable sessions are bound to


@dataclass(frozen=True, slots=True)
class LocalEngine:
    engine: Engine
    runner: ModelRunner
    facts: EngineFacts


def build_engine(config: RuntimeConfig, loaded: LoadedModel, draft: LoadedModel | None,
                 executor: ThreadPoolExecutor | None, on_run_ahead: Callable[[str], None] | None) -> LocalEngine:
    """The engine over `loaded` (and its draft model) with the runner options the config asks for."""
    engine = config.engine
    deterministic = engine.deterministic if engine.deterministic is not None else loaded.device.type == "cpu"
    kv_dtype = slab_dtype(engine.kv_dtype, loaded.dtype, loaded.device, engine.is_bounded)
    shape = KVShape(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, kv_dtype, loaded.device)
    draft_shape = None
    if draft is not None:
        # The draft model's slabs keep its own dtype: they are small, and its tokens are only proposals.
        draft_shape = KVShape(draft.num_layers, draft.num_kv_heads, draft.head_dim, draft.dtype, draft.device)
    runner_options = dict(cuda_graphs=engine.cuda_graphs, cuda_fusion=engine.cuda_fusion,
                          bounded=engine.is_bounded, cpu_packed_linears=engine.cpu_packed_linears,
                          cpu_decoder=engine.cpu_decoder, cpu_weights=engine.cpu_weights)
    # A step whose rows feed drafts never matches a launched-ahead plain decode step, which is then
    # dropped; with host-side proposals (n-gram, suffix) most steps of traffic that does not echo
    # draft nothing, and without run-ahead those steps wait on the host round trip. A draft
    # model's proposals are made on the model thread inside the step, after a claim would have
    # answered it: no run-ahead there.
    run_ahead = engine.cuda_run_ahead and config.speculative.mode in ("none", "ngram", "suffix")
    runner = ModelRunner(loaded, deterministic, executor, run_ahead=run_ahead, kv_dtype=kv_dtype,
                         on_run_ahead=on_run_ahead, **runner_options)
    draft_runner = None
    if draft is not None:
        draft_runner = DraftRunner(draft, deterministic, runner.executor, **runner_options)
    # A model whose every layer has a sliding window keeps only the widest window's positions;
    # tokens leaving it are not dropped from view (no truncated events): no layer reads them.
    kept = engine.window_tokens or forward_path.kept_window(loaded, draft)
    paths = runner.paths(kept_window=0 if engine.window_tokens else kept)
    facts = EngineFacts(ModelFacts.of(loaded), shape, draft_shape, draft.model_id if draft is not None else None,
                        deterministic, kept, paths, model_fingerprint(loaded, kv_dtype))
    return LocalEngine(Engine(runner, draft_runner), runner, facts)
