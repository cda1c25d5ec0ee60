"""The model thread's side of a step: packs rows of many sessions into one forward and samples.

Only this module touches the device. It is called on one dedicated thread and holds no asyncio.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

from kakeya.runtime.cpu import held_weights, linear as cpu_linear
from kakeya.runtime.engine import attention_hook  # noqa: F401 - registers the attention function every forward calls
from kakeya.runtime.engine import forward_path
from kakeya.runtime.engine.run_ahead import RunAhead
from kakeya.runtime.forward.rows import RowGroup, StepLayout, cut_slab
from kakeya.runtime.cpu.plan import decode_views, plan_group, step_views
from kakeya.runtime.cpu.decoder import CpuDecoder
from kakeya.runtime.forward.decoder_family import of_family, unsupported
from kakeya.runtime.forward.loaded_model import LoadedModel
from kakeya.runtime.engine.step import StepRow
from kakeya.runtime.forward.step_logits import as_step_logits
from kakeya.runtime.engine.verify import accept

# Without packed weights (runtime/cpu/linear.py), GEMMs and the lm_head see a multiple of this many rows in
# deterministic mode: on the AMD EPYC first measured, MKL gives a row one result once M >= 8
# (docs/determinism.md). Not on every CPU: on an Intel Xeon (AVX-512) some shapes change again from 16
# or 64 rows; blas_probe.py warns at start-up. Packed GEMMs need no padding: a row's bits do not
# depend on the row count there.
DETERMINISTIC_ROW_MULTIPLE = 8


def model_thread() -> ThreadPoolExecutor:
    """The one thread that touches the device. Loading the model on it too matters on the CPU:
    OpenMP keeps a thread team per calling thread, and a second team left spinning from another
    thread slows decoding on a machine with few cores."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="kakeya-model")


T = TypeVar("T")


def run_on(executor: ThreadPoolExecutor) -> Callable[[Callable[[], T]], T]:
    """Runs work on the executor's thread and waits for it; work already on that thread (a slab
    operation that reserves a slab) runs in place rather than waiting on itself."""
    inside = threading.local()

    def marked(work: Callable[[], T]) -> T:
        inside.active = True
        try:
            return work()
        finally:
            inside.active = False

    def run(work: Callable[[], T]) -> T:
        if getattr(inside, "active", False):
            return work()
        return executor.submit(marked, work).result()

    return run


class ModelRunner:
    def __init__(self, loaded: LoadedModel, deterministic: bool, executor: ThreadPoolExecutor | None = None,
                 cuda_graphs: bool = True, cuda_fusion: bool = True, bounded: bool = False,
                 run_ahead: bool = False, on_run_ahead: Callable[[str], None] | None = None,
                 cpu_packed_linears: bool = True, cpu_decoder: bool = True,
                 kv_dtype: torch.dtype | None = None, cpu_weights: str = "float32") -> None:
        self.loaded = loaded
        self.deterministic = deterministic
        self.executor = executor or model_thread()
        # On CUDA the forward runs on the row kernels (and graphs); elsewhere, and in bounded mode
        # (whose visible keys are not a prefix of the slab), on the packed SDPA path.
        self.cuda = None
        # Sliding-window, soft-capped and sink layers attend on the slab path (cpu/windowed.py).
        plain = forward_path.check_layers(loaded, bounded, deterministic)
        self.bounded = bounded
        if loaded.device.type == "cuda" and not bounded and plain:
            # Imported here: the CUDA path needs triton, which CPU builds of torch lack.
            from kakeya.runtime.cuda.forward import CudaForward

            # CUDA graphs replay only the Llama family's forward, the one verified under replay on a
            # GPU; a GPT-2 stream left transformers' tokens there, so other families run eagerly.
            cuda_graphs = cuda_graphs and of_family(loaded.model)
            self.cuda = CudaForward(loaded, deterministic, cuda_graphs, cuda_fusion, kv_dtype=kv_dtype)
        # Fast-mode graphs only: deterministic steps are cut into fixed-size forwards instead.
        self.run_ahead = None
        if run_ahead and self.cuda is not None and cuda_graphs and not deterministic:
            self.run_ahead = RunAhead(self.cuda, on_run_ahead)
        # CPU: packed on the model thread, at warm-up or the first step (OpenMP teams are per thread).
        self.pack_linears = cpu_packed_linears and cpu_linear.available(loaded.model)
        # Quantized weights replace the fp32 linears (cpu/held_weights.py), once, on the model thread.
        self.cpu_weights = forward_path.check_cpu_weights(loaded, cpu_weights)
        self._held = False
        self.packed: cpu_linear.PackedMode | None = None
        self.use_cpu_decoder = cpu_decoder
        self.cpu_decoder: CpuDecoder | None = None
        # Fault injection for tests only: while set to an unset Event, every step blocks on it;
        # a set fault_error is raised by the next step, as a failing device would.
        self.fault_gate: threading.Event | None = None
        self.fault_error: BaseException | None = None

    def run(self, items: list[StepRow]) -> list[tuple[int, ...]]:
        """One forward over every item's rows; returns each item's emitted tokens: () when it
        samples nothing, else its accepted draft tokens and one sampled token."""
        if self.fault_gate is not None:
            self.fault_gate.wait()
        if self.fault_error is not None:
            raise self.fault_error
        if self.run_ahead is not None:
            claimed = self.run_ahead.claim(items)
            if claimed is not None:
                return claimed
        firsts = [item.kv.num_positions for item in items]
        logits = self.feed(items)
        if self.cuda is None:
            logits = as_step_logits(logits)  # one argmax for every greedy row of the step
        if self.run_ahead is not None:
            emitted = self.run_ahead.after_step(items, logits.rows)
            if emitted is not None:
                return emitted  # greedy decode rows: feed() already moved num_positions
        results: list[tuple[int, ...]] = []
        row = 0
        for item, first in zip(items, firsts):
            if item.sampler is None:
                results.append(())
                continue
            num_rows = len(item.draft) + 1
            emitted = accept(logits[row:row + num_rows], item.draft, item.sampler, item.draft_probs)
            row += num_rows
            # Exact rollback: the slab keeps only the fed rows whose tokens were accepted; rows of
            # rejected draft tokens lie past num_positions and are overwritten by later writes.
            item.kv.num_positions = first + len(item.tokens) + len(emitted) - 1
            results.append(emitted)
        return results

    def feed(self, items: list[StepRow]) -> torch.Tensor:
        """One forward over every item's tokens and draft, all of which join its KV; returns the
        logits rows of items with a sampler: each one's last token's row and its draft's rows."""
        ids: list[int] = []
        positions: list[int] = []
        groups: list[RowGroup] = []
        keep_rows: list[int] = []
        for item in items:
            rows = item.tokens + item.draft
            item.kv.compact_for(len(rows))
            first = item.kv.num_positions
            groups.append(RowGroup(item.kv, len(ids), len(rows), first))
            ids.extend(rows)
            positions.extend(range(first, first + len(rows)))
            if item.sampler is not None:
                keep_rows.extend(range(len(ids) - len(item.draft) - 1, len(ids)))
        num_real = len(ids)
        self._set_packed_mode()
        if self.deterministic and self.cuda is None and self.packed is None:
            pad = -num_real % DETERMINISTIC_ROW_MULTIPLE
            ids.extend([0] * pad)
            positions.extend([0] * pad)
            if keep_rows:
                keep_rows.extend([keep_rows[-1]] * (-len(keep_rows) % DETERMINISTIC_ROW_MULTIPLE))
        layout = StepLayout(tuple(groups), len(ids), self.deterministic)
        if self.deterministic and self.cuda is None:
            # Full-attention groups attend in bucketed calls; a bounded group row by row.
            dtype, device = self.loaded.dtype, self.loaded.device
            layout = dataclasses.replace(layout, cpu_plans=tuple(
                None if g.kv.window_tokens else plan_group(g.row_start, g.num_rows, g.first_position, dtype, device)
                for g in groups))
        if self.cuda is None:
            plans = layout.cpu_plans or (None,) * len(groups)
            layout = dataclasses.replace(layout, cpu_cuts=tuple(cut_slab(g, p) for g, p in zip(groups, plans)))
            views = (decode_views(groups, layout.cpu_cuts, layout.num_rows) if layout.cpu_plans is None
                     else step_views(groups, layout.cpu_plans, layout.cpu_cuts, layout.num_rows))
            layout = dataclasses.replace(layout, cpu_views=views)
        logits = self._forward(ids, positions, layout, keep_rows)
        for group in groups:
            group.kv.num_positions = group.first_position + group.num_rows
        return logits

    def _forward(self, ids, positions, layout: StepLayout, keep_rows: list[int]) -> torch.Tensor:
        if self.cuda is not None:
            return self.cuda.forward(ids, positions, layout.groups, keep_rows)
        device = self.loaded.device
        if self.cpu_decoder is not None:
            with torch.inference_mode():
                logits = self.cpu_decoder(torch.tensor([ids]), torch.tensor([positions]), layout,
                                          torch.tensor(keep_rows) if keep_rows else None)
            return torch.empty(0) if logits is None else logits[0].float()
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

    def _set_packed_mode(self) -> None:
        if self.cpu_weights != "float32" and not self._held:
            held_weights.quantize(self.loaded.model, self.cpu_weights)  # a walk of every module: once
            self._held = True
        if self.pack_linears and self.packed is None:
            self.packed = cpu_linear.pack_linears(self.loaded.model)
            if self.use_cpu_decoder:
                self.cpu_decoder = CpuDecoder.build(self.loaded.model, self.packed)
        if self.packed is not None:
            # Runners of both modes may share one model (benchmarks): each sets the rule it needs.
            self.packed.deterministic = self.deterministic

    def paths(self, kept_window: int = 0) -> dict[str, str]:
        """GetRuntimeInfo's words for the forward in use (kept_window: the positions an all-window
        model's slabs keep); the CPU decoder is built at warm-up, so whether it will run is read
        from the rule it is built by."""
        cpu_decoder = self.cpu_decoder is not None or (
            self.use_cpu_decoder and self.pack_linears and unsupported(self.loaded.model, nope_layers=True) is None)
        cuda_decoder = getattr(self.cuda, "decoder", None) is not None
        return forward_path.paths(self.loaded, cuda=self.cuda, cuda_decoder=cuda_decoder, cpu_decoder=cpu_decoder,
                                  packed=self.pack_linears, deterministic=self.deterministic, bounded=self.bounded,
                                  held=self._held_words(), kept_window=kept_window)

    def _held_words(self) -> str:
        if self.cpu_weights == "float32":
            return ""
        return held_weights.describe(self.loaded.model, self.cpu_weights)

    def warm_up(self, max_rows: int) -> None:
        """Prepares the fast path for steps of up to max_rows rows: CUDA graphs, or the CPU's packed weights."""
        if self.cuda is not None:
            self.cuda.warm_up(max_rows)
        self._set_packed_mode()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
