"""The CUDA forward of a step: row kernels on the session slabs, replayed as CUDA graphs when it can.

Fast mode: a step whose sessions each feed a few rows (decode, draft verification) replays a graph
captured for the next bucket of row counts; padding rows write to and read from a one-token scratch
slab. Steps with longer prefill chunks run eagerly: those chunks attend through SDPA, the rest
through the row kernel.

Deterministic mode: every forward has exactly `det_rows` rows (a step is cut into such forwards,
padded) and every row attends through the row kernel, whose reduction order depends only on the
row's own key count. Every GEMM, norm and kernel then sees one shape whatever the batch, so a
session's tokens do not depend on its neighbours or on how its history was appended.

Only the host copies of the inputs and of the sampled rows synchronise with the device.
"""

from __future__ import annotations

import torch

from kakeya.runtime.forward.rows import RowGroup, StepLayout
from kakeya.runtime.cuda.graphs import Graphs
from kakeya.runtime.cuda.plan import BLOCK_ROWS, BUCKETS, graph_plan, kernel_eligible
from kakeya.runtime.cuda.row_meta import KEEP, META, STAGED_ROWS, KernelMeta, row_meta, with_leaders
from kakeya.runtime.forward.loaded_model import LoadedModel
from kakeya.runtime.forward.step_logits import StepLogits

# No attention_mask is passed: transformers builds none for an attention function it has no mask
# function for (the registered "kakeya" one), and a per-layer-type dict of None masks, which some
# families accept, breaks others (GPT-2 reads the mask's shape).


class CudaForward:
    def __init__(self, loaded: LoadedModel, deterministic: bool, graphs: bool, fusion: bool = True,
                 det_rows: int = 64, max_graph_rows: int = 1024, kv_dtype: torch.dtype | None = None) -> None:
        self.loaded = loaded
        self.kv_dtype = kv_dtype or loaded.dtype
        if fusion and not getattr(loaded.model, "kakeya_fused", False):
            from kakeya.runtime.cuda.fusion import fuse_pointwise

            fuse_pointwise(loaded.model)
            loaded.model.kakeya_fused = True
        # Llama-family models run on the fused decoder; others on transformers' modules. Imported
        # here: it needs triton (CPU builds of torch lack it), which importing this module does not.
        from kakeya.runtime.cuda.decoder import FusedDecoder

        self.decoder = FusedDecoder.build(loaded.model) if fusion else None
        self.device = loaded.device
        self.deterministic = deterministic
        self.use_graphs = graphs
        self.det_rows = det_rows
        self.buckets = tuple(b for b in BUCKETS if b <= max_graph_rows)
        self.block_rows = BLOCK_ROWS if deterministic else self._block_rows(loaded)
        # Padding rows' one-token slab; every slab of a launch has one dtype, the kernels' pointer type.
        self.scratch = torch.zeros(loaded.num_layers, 2, loaded.num_kv_heads, 1, loaded.head_dim,
                                   dtype=self.kv_dtype, device=self.device)
        self._scratch_row = [self.scratch.data_ptr(), 1, 0, 1, 1, -1]
        self.scratch_meta = torch.tensor(self._scratch_row, dtype=torch.int64, device=self.device)
        self.graphs = Graphs(self, torch.cuda.graph_pool_handle() if graphs else None)
        self._staging = torch.zeros(STAGED_ROWS, 0, dtype=torch.int64)
        self._staged_copied: torch.cuda.Event | None = None

    def run_model(self, ids: torch.Tensor, positions: torch.Tensor, layout: StepLayout,
                  keep: torch.Tensor | None) -> torch.Tensor:
        """The model on [1, rows] inputs; logits of `keep` rows (None: all rows)."""
        if self.decoder is not None:
            hidden = self.decoder(ids[0], positions[0], layout)
            return self.loaded.model.lm_head(hidden if keep is None else hidden[keep])
        out = self.loaded.model(input_ids=ids, position_ids=positions, use_cache=False,
                                logits_to_keep=0 if keep is None else keep, kakeya_layout=layout)
        return out.logits[0]

    def run_captured(self, ids: torch.Tensor, positions: torch.Tensor, layout: StepLayout) -> torch.Tensor:
        """What a graph captures: all rows' logits (deterministic) or hidden states (fast)."""
        if self.deterministic:
            return self.run_model(ids, positions, layout, None)
        return self.hidden(ids, positions, layout)

    def hidden(self, ids: torch.Tensor, positions: torch.Tensor, layout: StepLayout) -> torch.Tensor:
        """[rows, hidden] final hidden states of [1, rows] inputs."""
        if self.decoder is not None:
            return self.decoder(ids[0], positions[0], layout)
        out = self.loaded.model.model(input_ids=ids, position_ids=positions, use_cache=False, kakeya_layout=layout)
        return out.last_hidden_state[0]

    def forward(self, ids: list[int], positions: list[int], groups: tuple[RowGroup, ...],
                keep_rows: list[int]) -> StepLogits:
        meta = row_meta(groups, len(ids), not self.deterministic, self.block_rows)
        with torch.inference_mode():
            if self.deterministic:
                return self._deterministic(ids, positions, meta, keep_rows)
            plan = graph_plan(groups, self.block_rows) if self.use_graphs else None
            if plan is not None and all(len(rows) <= self.buckets[-1] for rows in plan):
                return self._replay_plan(plan, ids, positions, meta, keep_rows)
            return self._eager(ids, positions, meta, groups, keep_rows)

    def _replay_plan(self, plan: list[list[int]], ids, positions, meta, keep_rows) -> StepLogits:
        """Replays one graph per forward of the plan, in order; keeps the hidden states of keep_rows."""
        if len(plan) == 1 and len(plan[0]) == len(ids):
            forwards = [(ids, positions, with_leaders(meta), keep_rows)]
        else:
            forwards = [([ids[r] for r in rows], [positions[r] for r in rows],
                         with_leaders([[m[r] for r in rows] for m in meta]),
                         [rows.index(r) for r in keep_rows if r in rows]) for rows in plan]
        kept: list[torch.Tensor] = []
        for sub_ids, sub_positions, sub_meta, sub_keep in forwards:
            blocks = any(lead > 1 for lead in sub_meta[4])
            graph = self.graphs.for_rows(len(sub_ids), blocks)
            hidden = graph.replay(self._stage(sub_ids, sub_positions, sub_meta, graph.rows, sub_keep))
            self._mark_copied()
            if sub_keep:
                # Copied out: the next replay of the same bucket overwrites the graph's output.
                kept.append(hidden[graph.keep[:len(sub_keep)]].clone())
        if not kept:
            return StepLogits(torch.empty(0, device=self.device))
        # Each session's sampled row is its last, which lies in the plan's last forward holding
        # that session; reorder the kept rows back into keep_rows order.
        order = [r for rows in plan for r in keep_rows if r in rows] if len(forwards) > 1 else keep_rows
        hidden = torch.cat(kept)
        if order != keep_rows:
            hidden = hidden[torch.tensor([order.index(r) for r in keep_rows], device=self.device)]
        return StepLogits(self.loaded.model.lm_head(hidden))

    def decode_gathered(self, source: torch.Tensor, rows: list[int], positions: list[int],
                        groups: tuple[RowGroup, ...]) -> torch.Tensor:
        """Logits of a one-row-per-session forward whose input ids are source[rows], gathered on the
        GPU: the host does not wait for the tokens it feeds (run_ahead.py)."""
        graph = self.graphs.for_rows(len(rows), False)
        meta = with_leaders(row_meta(groups, len(rows), False, self.block_rows))
        staged = self._stage(rows, positions, meta, graph.rows, range(len(rows)))
        hidden = graph.replay(staged, gather_ids=source)
        self._mark_copied()
        return self.loaded.model.lm_head(hidden[graph.keep[:len(rows)]])

    def _eager(self, ids, positions, meta, groups, keep_rows) -> StepLogits:
        kernel_rows = [g.row_start + r for g in groups if kernel_eligible(g, self.block_rows)
                       for r in range(g.num_rows)]
        # An SDPA group's rows may hold leads (block_leads), but attend through SDPA, not in blocks.
        staged = self._stage(ids, positions, with_leaders(meta, set(kernel_rows)), len(ids), keep_rows)
        staged = staged.to(self.device, non_blocking=True)
        self._mark_copied()
        sdpa = tuple(g for g in groups if not kernel_eligible(g, self.block_rows))
        cuda = KernelMeta(staged[META], torch.tensor(kernel_rows, dtype=torch.int64).to(self.device, non_blocking=True), sdpa,
                        any(lead > 1 for lead in meta[4]), self.kv_dtype, self.block_rows)
        layout = StepLayout(groups, len(ids), False, cuda)
        if not keep_rows:
            self.hidden(staged[0:1], staged[1:2], layout)
            return StepLogits(torch.empty(0, device=self.device))
        return StepLogits(self.run_model(staged[0:1], staged[1:2], layout, staged[KEEP, :len(keep_rows)]))

    def _deterministic(self, ids, positions, meta, keep_rows) -> StepLogits:
        """Forwards of exactly det_rows rows each, in order: later rows see the keys earlier ones wrote."""
        n = self.det_rows
        kept: list[torch.Tensor] = []
        padded = -(-len(ids) // n) * n
        all_staged = self._stage(ids, positions, with_leaders(meta), padded)
        chunk_keeps = [[r - lo for r in keep_rows if lo <= r < lo + n] for lo in range(0, len(ids), n)]
        for lo, chunk_keep in zip(range(0, len(ids), n), chunk_keeps):
            all_staged[KEEP, lo:lo + len(chunk_keep)] = torch.tensor(chunk_keep, dtype=torch.int64)
        for lo, chunk_keep in zip(range(0, len(ids), n), chunk_keeps):
            staged = all_staged[:, lo:lo + n]
            if self.use_graphs:
                logits = self.graphs.get(n, False).replay(staged)
            else:
                inputs = staged.to(self.device)
                cuda = KernelMeta(inputs[META], torch.arange(n, device=self.device), (), False, self.kv_dtype)
                logits = self.run_model(inputs[0:1], inputs[1:2], StepLayout((), n, True, cuda), None)
            self._mark_copied()
            if chunk_keep:
                index = self.graphs.get(n, False).keep if self.use_graphs else inputs[KEEP]
                kept.append(logits[index[:len(chunk_keep)]].clone())
        return StepLogits(torch.cat(kept) if kept else torch.empty(0, device=self.device))

    def warm_up(self, max_rows: int) -> None:
        """Captures the graphs of every bucket up to max_rows (compiling the fused kernels on the way)."""
        if self.use_graphs:
            self.graphs.warm_up(max_rows)

    def _block_rows(self, loaded: LoadedModel) -> int:
        """Rows a block holds: more where the fp8 slabs' CUDA block kernel serves the blocks."""
        from kakeya.runtime.kernels import fp8_block as cuda_block_fp8

        config = loaded.model.config
        return cuda_block_fp8.block_rows(config.num_attention_heads, loaded.num_kv_heads, loaded.head_dim,
                                         loaded.dtype, self.kv_dtype, self.device.index) or BLOCK_ROWS

    def _stage(self, ids, positions, meta, rows: int, keep=()) -> torch.Tensor:
        """Pinned [STAGED_ROWS, rows] inputs; rows past the real ones are padding on the scratch slab.
        The kept rows' indices travel in the same copy: indexing with a tensor built from a list
        would copy from pageable memory, which waits for the whole replay."""
        n = len(ids)
        if self._staged_copied is not None:
            # The previous step's copy out of this pinned buffer must be done before it is reused.
            self._staged_copied.synchronize()
        if self._staging.shape[1] < rows:
            self._staging = torch.zeros(STAGED_ROWS, max(rows, 1024), dtype=torch.int64).pin_memory()
        staging = self._staging[:, :rows]
        staging[0, :n] = torch.tensor(ids, dtype=torch.int64)
        staging[1, :n] = torch.tensor(positions, dtype=torch.int64)
        staging[META, :n] = torch.tensor(meta, dtype=torch.int64)
        if keep:
            staging[KEEP, :len(keep)] = torch.tensor(keep, dtype=torch.int64)
        if rows > n:
            staging[0:2, n:] = 0
            staging[META, n:] = torch.tensor(self._scratch_row, dtype=torch.int64)[:, None]
        return staging

    def _mark_copied(self) -> None:
        self._staged_copied = torch.cuda.Event()
        self._staged_copied.record()
