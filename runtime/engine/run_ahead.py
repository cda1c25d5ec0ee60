"""Run-ahead decoding on the CUDA fast path: the next decode step is on the GPU before it is asked for.

A decode step of a small model is short on the GPU, and the host round trip around it is of the
same order: the step's tokens go to the event loop, which streams them and plans the next step. Without run-ahead the GPU idles through that round trip.

So after a step whose rows all sample greedily, the model thread launches one more forward at
once: every row feeds the token it just sampled (still on the GPU, gathered there) at its next
position. Only then does it wait for the step's tokens. When the scheduler's next step asks for
exactly those rows (or a subset: sessions that stopped are dropped), the launched forward is
claimed instead of run, and the one after it is launched before waiting.

Nothing is committed ahead: a session's `num_positions` moves only when its row is claimed. The
K/V an unclaimed row wrote lies past `num_positions`, where nothing reads it and the session's
next fed token overwrites it (the same rule as a rejected draft row). A launch whose rows the
scheduler does not ask for (a new session joins, a stop, sampling) is dropped: the GPU finishes
it before the step that replaces it, which costs that step one forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch

from kakeya.runtime.forward.rows import RowGroup

from kakeya.runtime.engine.step import StepRow

if TYPE_CHECKING:  # the CUDA path only: importing it needs triton
    from kakeya.runtime.cuda.forward import CudaForward


class _Launched:
    """A forward on the GPU: row i feeds the previous step's token sources[i] (known on the host once
    that step's tokens are read, as fed[i]) to session kvs[i] at positions[i]; its sampled tokens
    arrive in `host` at `ready`."""

    def __init__(self, kvs: list, positions: list[int], sources: list[int], tokens: torch.Tensor) -> None:
        self.kvs = kvs  # held, so a kv_id stays unique while this forward can be claimed
        # The slabs it wrote into: one the scheduler resized since (a trim after a cancel, a
        # reserve for the next turn) lacks the launched row's K/V, so the launch no longer matches.
        self.slabs = [kv.slab for kv in kvs]
        self.rows = {kv.kv_id: i for i, kv in enumerate(kvs)}
        self.positions = positions
        self.sources = sources
        self.fed: list[int] = []
        self.tokens = tokens  # [rows] int64 on the device
        self.host, self.ready = _copy_to_host(tokens)

    def match(self, items: Sequence[StepRow]) -> list[int] | None:
        """The launched row of each item, when every item asks exactly what its row computed."""
        rows = []
        for item in items:
            row = self.rows.get(item.kv.kv_id)
            if (row is None or not eligible_item(item) or item.tokens != (self.fed[row],)
                    or item.kv.num_positions != self.positions[row] or item.kv.slab is not self.slabs[row]):
                return None
            rows.append(row)
        return rows


def eligible_item(item: StepRow) -> bool:
    """Decode rows that sample greedily: the next input token is their argmax, known on the GPU."""
    return (item.sampler is not None and item.sampler.params.is_greedy and not item.draft
            and item.draft_probs is None)


def _copy_to_host(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
    host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
    host.copy_(tokens, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


class RunAhead:
    """Owned by the model runner; used on the model thread only."""

    def __init__(self, cuda: "CudaForward", on_outcome: Callable[[str], None] | None = None) -> None:
        self._cuda = cuda
        self._launched: _Launched | None = None
        self._on_outcome = on_outcome  # called with "claimed" or "dropped" (a metric)
        self.num_claimed = 0
        self.num_dropped = 0

    def claim(self, items: Sequence[StepRow]) -> list[tuple[int, ...]] | None:
        """The step's emitted tokens if the launched forward computed them (and the next forward is
        launched before waiting for them); None when the step must run normally."""
        launched, self._launched = self._launched, None
        if launched is None:
            return None
        rows = launched.match(items) if items else None
        if rows is None:
            self.num_dropped += 1
            self._report("dropped")
            return None
        self.num_claimed += 1
        self._report("claimed")
        for item, row in zip(items, rows):
            item.kv.num_positions = launched.positions[row] + 1
        self._launch(items, launched.tokens, rows)
        return self._read(launched, rows)

    def after_step(self, items: Sequence[StepRow], logits: torch.Tensor) -> list[tuple[int, ...]] | None:
        """After a normal forward whose kept rows are `logits` ([items, vocab], one per item, on the
        GPU): launches the next step from their argmax, then returns each item's token. None when
        some item is not a greedy decode row."""
        if not items or not all(eligible_item(item) for item in items):
            return None
        tokens = logits.argmax(-1)
        host, ready = _copy_to_host(tokens)
        self._launch(items, tokens, list(range(len(items))))
        ready.synchronize()
        emitted = host.tolist()
        self._set_fed(emitted)
        return [(token,) for token in emitted]

    def _report(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def _launch(self, items: Sequence[StepRow], tokens: torch.Tensor, rows: list[int]) -> None:
        """Launches the step after `items`, row j feeding tokens[rows[j]], for the items whose
        request goes on: one that samples its last token here would only be dropped, and the next
        step (the session's next turn, say) would wait for it."""
        going_on = [(item.kv, row) for item, row in zip(items, rows) if not item.is_final]
        if not going_on:
            return
        kvs = [kv for kv, _ in going_on]
        sources = [row for _, row in going_on]
        positions = [kv.num_positions for kv in kvs]
        if len(kvs) > self._cuda.buckets[-1] or any(kv.storage_index(p) >= kv.capacity
                                                   for kv, p in zip(kvs, positions)):
            return  # a slab would need to grow: only the scheduler's reserve may do that
        groups = tuple(RowGroup(kv, i, 1, p) for i, (kv, p) in enumerate(zip(kvs, positions)))
        with torch.inference_mode():
            next_tokens = self._cuda.decode_gathered(tokens, sources, positions, groups).argmax(-1)
        self._launched = _Launched(kvs, positions, sources, next_tokens)

    def _set_fed(self, tokens: list[int]) -> None:
        """Once the step the launched one follows has its tokens on the host."""
        if self._launched is not None:
            self._launched.fed = [tokens[source] for source in self._launched.sources]

    def _read(self, launched: _Launched, rows: list[int]) -> list[tuple[int, ...]]:
        launched.ready.synchronize()
        tokens = launched.host.tolist()
        self._set_fed(tokens)
        return [(tokens[row],) for row in rows]
