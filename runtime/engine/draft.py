"""The draft model of speculative decoding: how it is obtained, and how it proposes on the model thread.

Two sources: a model of its own sharing the verifier's vocabulary (`--draft-model`), or the
verifier's first N decoder layers with its final norm and lm_head (`--draft-layers`), which share
the verifier's weights and cost no weight memory. Either keeps its own KV slab per session, held
in the session's lease (runtime/forward/session_kv.py).
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from kakeya.runtime.common.config import ModelConfig, SpeculativeConfig
from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.forward.session_kv import SessionKV
from kakeya.runtime.engine.loader import describe, load_model
from kakeya.runtime.forward.loaded_model import LoadedModel
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.step import StepRow
from kakeya.runtime.engine.sampler import Sampler


def truncated_draft(verifier: LoadedModel, num_layers: int) -> LoadedModel:
    """The verifier's first num_layers decoder layers, final norm and lm_head, as a model of its own.

    Modules are shared, not copied: only the two container modules and the config are new.
    """
    total = verifier.num_layers
    if not 1 <= num_layers < total:
        raise FailedPrecondition(f"--draft-layers must be in 1..{total - 1} for a {total}-layer model, got {num_layers}")
    config = copy.deepcopy(verifier.model.config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]
    decoder = _shallow_copy(verifier.model.model)
    decoder.layers = torch.nn.ModuleList(list(verifier.model.model.layers)[:num_layers])
    decoder.config = config
    draft = _shallow_copy(verifier.model)
    draft.model = decoder
    draft.config = config
    return describe(draft, model_id=f"{verifier.model_id}[:{num_layers} layers]", device=verifier.device,
                    dtype=verifier.dtype)


def _shallow_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A new module object whose children, parameters and buffers are the original's."""
    clone = copy.copy(module)
    # copy.copy shares the registries themselves; new dicts keep assignments to the clone local.
    clone._modules = dict(module._modules)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    return clone


def load_draft(config: SpeculativeConfig, model: ModelConfig, verifier: LoadedModel,
               attn_implementation: str) -> LoadedModel | None:
    """The draft model the config asks for (None unless --speculative draft). Runs on the model thread."""
    if config.mode != "draft":
        return None
    if config.draft_layers:
        return truncated_draft(verifier, config.draft_layers)
    draft_config = ModelConfig(model=config.draft_model, device=str(verifier.device),
                               dtype=str(verifier.dtype).removeprefix("torch."))
    draft = load_model(draft_config, attn_implementation)
    if draft.vocab_size != verifier.vocab_size:
        raise FailedPrecondition(
            f"the draft model {draft.model_id!r} has a vocabulary of {draft.vocab_size} tokens, the verifier "
            f"{verifier.model_id!r} has {verifier.vocab_size}: a draft must share the verifier's vocabulary"
        )
    return draft


@dataclass(frozen=True, slots=True)
class DraftRequest:
    """Feed `tokens` to a session's draft slab, then propose num_draft tokens after them (0: only feed)."""

    kv: SessionKV  # the draft's own slab
    tokens: tuple[int, ...]
    num_draft: int
    sampler: Sampler  # greedy requests draft greedily; sampling ones draw from the draft's distribution


@dataclass(frozen=True, slots=True)
class Proposal:
    tokens: tuple[int, ...]
    probs: torch.Tensor | None  # [len(tokens), vocab]; None when drafted greedily


class DraftRunner:
    """Runs the draft model for every speculating session at once: one forward per draft position."""

    def __init__(self, loaded: LoadedModel, deterministic: bool, executor: ThreadPoolExecutor,
                 **runner_options) -> None:
        self.loaded = loaded
        # Called on the verifier's model thread (the executor is shared, never used on its own);
        # runner_options are the verifier's (device fast path settings).
        self._runner = ModelRunner(loaded, deterministic, executor, **runner_options)

    def warm_up(self, max_rows: int) -> None:
        self._runner.warm_up(max_rows)

    def propose(self, requests: list[DraftRequest]) -> list[Proposal]:
        """Feeds each request's tokens, then drafts one token per forward for those that propose.

        The draft slab ends holding every fed token and every proposed one but the last, so a
        fully accepted draft leaves it one token behind the verifier, like a rejected one does.
        """
        tokens: list[list[int]] = [[] for _ in requests]
        probs: list[list[torch.Tensor]] = [[] for _ in requests]
        active = list(range(len(requests)))
        items = [StepRow(r.kv, r.tokens, r.sampler if r.num_draft else None) for r in requests]
        while items:
            logits = self._runner.feed(items)
            proposing = [i for i, item in zip(active, items) if item.sampler is not None]
            for row, i in enumerate(proposing):
                token, q = _draw(logits[row], requests[i].sampler)
                tokens[i].append(token)
                if q is not None:
                    probs[i].append(q)
            active = [i for i in proposing if len(tokens[i]) < requests[i].num_draft]
            items = [StepRow(requests[i].kv, (tokens[i][-1],), requests[i].sampler) for i in active]
        return [Proposal(tuple(t), torch.stack(p) if p else None) for t, p in zip(tokens, probs)]


def _draw(logits: torch.Tensor, sampler: Sampler) -> tuple[int, torch.Tensor | None]:
    if sampler.params.is_greedy:
        return int(torch.argmax(logits)), None
    # The draft's distribution under the request's own temperature / top-k / top-p; any q keeps
    # rejection sampling exact, and this one tracks the verifier's best.
    q = sampler.probs(logits.float().cpu())
    return int(torch.multinomial(q, 1, generator=sampler.generator)), q
