"""CUDA graphs of a step's forward: one captured a bucket of row counts (and with or without
blocks), replayed with each step's inputs copied into its static buffers.

A step of fewer rows than its bucket pads the rest onto the one-token scratch slab (forward.py),
so a few captured graphs serve every batch size up to the largest bucket.
"""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING

import structlog
import torch

from kakeya.runtime.forward.rows import StepLayout
from kakeya.runtime.cuda.row_meta import KEEP, META, STAGED_ROWS, KernelMeta

if TYPE_CHECKING:
    from kakeya.runtime.cuda.forward import CudaForward

log = structlog.get_logger(__name__)


class CapturedForward:
    """One captured forward over `rows` rows; inputs are copied into its static buffers.

    Fast mode captures the decoder only (the lm_head runs on the kept rows after the replay, so a
    1024-row bucket holds no [1024, vocab] buffer); deterministic mode captures the lm_head too,
    because its GEMM must always see det_rows rows."""

    def __init__(self, owner: CudaForward, rows: int, pool, blocks: bool) -> None:
        device = owner.device
        self.rows = rows
        # ids, positions, 5 rows of meta, and the kept rows' indices (read after the replay).
        self.inputs = torch.zeros(STAGED_ROWS, rows, dtype=torch.int64, device=device)
        self.inputs[META] = owner.scratch_meta[:, None]
        self.keep = self.inputs[KEEP]
        cuda = KernelMeta(self.inputs[META], torch.arange(rows, device=device), (), blocks, owner.kv_dtype,
                        owner.block_rows)
        # Kept: the graph reads these tensors' memory on every replay.
        self.layout = layout = StepLayout((), rows, owner.deterministic, cuda)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: lazy initialisation and autotuning stay out of the graph
                owner.run_captured(self.inputs[0:1], self.inputs[1:2], layout)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.output = owner.run_captured(self.inputs[0:1], self.inputs[1:2], layout)

    def replay(self, staged: torch.Tensor, gather_ids: torch.Tensor | None = None) -> torch.Tensor:
        """gather_ids: the staged ids are indices into this device tensor (run-ahead decoding)."""
        self.inputs.copy_(staged, non_blocking=True)
        if gather_ids is not None:
            self.inputs[0].copy_(gather_ids[self.inputs[0]])
        self.graph.replay()
        return self.output


class Graphs:
    """A CudaForward's captured forwards, by (rows, blocks), each captured on first use into one
    memory pool (None: each capture takes its own)."""

    def __init__(self, owner: CudaForward, pool) -> None:
        self.owner = owner
        self.pool = pool
        self.captured: dict[tuple[int, bool], CapturedForward] = {}

    def get(self, rows: int, blocks: bool) -> CapturedForward:
        graph = self.captured.get((rows, blocks))
        if graph is None:
            log.info("cuda_graph_capture", rows=rows, blocks=blocks, deterministic=self.owner.deterministic)
            graph = self.captured[rows, blocks] = CapturedForward(self.owner, rows, self.pool, blocks)
        return graph

    def for_rows(self, rows: int, blocks: bool) -> CapturedForward:
        """The graph of the smallest bucket that holds `rows` rows."""
        buckets = self.owner.buckets
        return self.get(buckets[bisect.bisect_left(buckets, rows)], blocks)

    def warm_up(self, max_rows: int) -> None:
        """Captures the graphs of every bucket up to max_rows (compiling the fused kernels on the way)."""
        owner = self.owner
        started = time.monotonic()
        if owner.deterministic:
            self.get(owner.det_rows, False)
        else:
            for rows in owner.buckets[:bisect.bisect_left(owner.buckets, max_rows) + 1]:
                self.get(rows, False)
                if rows > 1:
                    self.get(rows, True)
        log.info("cuda_warm_up", graphs=len(self.captured), seconds=round(time.monotonic() - started, 1))
