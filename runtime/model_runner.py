"""The model thread's side of a step: packs rows of many sessions into one forward and samples.

Only this module touches the device. It is called on one dedicated thread and holds no asyncio.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .attention import RowGroup, StepLayout
from .kv_memory import SessionKV
from .model_loader import LoadedModel
from .sampler import Sampler

# GEMMs and the lm_head see a multiple of this many rows in deterministic mode: on the CPU
# kernels we measured, a row's result is bitwise stable once M >= 8 (BATCHING.md §3).
DETERMINISTIC_ROW_MULTIPLE = 8


@dataclass(frozen=True, slots=True)
class WorkItem:
    """Feed `tokens` to a session at its next positions; sample after the last one if sampler is set."""

    kv: SessionKV
    tokens: tuple[int, ...]
    sampler: Sampler | None


def model_thread() -> ThreadPoolExecutor:
    """The one thread that touches the device. Loading the model on it too matters on the CPU:
    OpenMP keeps a thread team per calling thread, and a second team left spinning from another
    thread cost 35% of decode speed on 2 cores."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="kakeya-model")


class ModelRunner:
    def __init__(self, loaded: LoadedModel, deterministic: bool, executor: ThreadPoolExecutor | None = None) -> None:
        self.loaded = loaded
        self.deterministic = deterministic
        self.executor = executor or model_thread()
        # Fault injection for tests only: while set to an unset Event, every step blocks on it;
        # a set fault_error is raised by the next step, as a failing device would.
        self.fault_gate: threading.Event | None = None
        self.fault_error: BaseException | None = None

    def step(self, items: list[WorkItem]) -> list[int | None]:
        """One forward over every item's rows; returns each item's sampled token or None."""
        if self.fault_gate is not None:
            self.fault_gate.wait()
        if self.fault_error is not None:
            raise self.fault_error
        ids: list[int] = []
        positions: list[int] = []
        groups: list[RowGroup] = []
        keep_rows: list[int] = []
        for item in items:
            item.kv.make_room(len(item.tokens))
            first = item.kv.num_positions
            groups.append(RowGroup(item.kv, len(ids), len(item.tokens), first))
            ids.extend(item.tokens)
            positions.extend(range(first, first + len(item.tokens)))
            if item.sampler is not None:
                keep_rows.append(len(ids) - 1)
        num_real = len(ids)
        if self.deterministic:
            pad = -num_real % DETERMINISTIC_ROW_MULTIPLE
            ids.extend([0] * pad)
            positions.extend([0] * pad)
            if keep_rows:
                keep_rows.extend([keep_rows[-1]] * (-len(keep_rows) % DETERMINISTIC_ROW_MULTIPLE))
        logits = self._forward(ids, positions, StepLayout(tuple(groups), len(ids), self.deterministic), keep_rows)
        for item in items:
            item.kv.num_positions += len(item.tokens)
        results: list[int | None] = []
        row = 0
        for item in items:
            if item.sampler is None:
                results.append(None)
            else:
                results.append(item.sampler.sample(logits[row]))
                row += 1
        return results

    def _forward(self, ids, positions, layout: StepLayout, keep_rows: list[int]) -> torch.Tensor:
        device = self.loaded.device
        with torch.inference_mode():
            if not keep_rows:
                # Prefill-only step: the lm_head is skipped entirely.
                self.loaded.model.model(
                    input_ids=torch.tensor([ids], device=device),
                    position_ids=torch.tensor([positions], device=device),
                    use_cache=False,
                    kakeya_layout=layout,
                )
                return torch.empty(0)
            out = self.loaded.model(
                input_ids=torch.tensor([ids], device=device),
                position_ids=torch.tensor([positions], device=device),
                use_cache=False,
                logits_to_keep=torch.tensor(keep_rows, device=device),
                kakeya_layout=layout,
            )
        return out.logits[0].float().cpu()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
