"""The logits of a step's kept rows, wherever the forward ran.

Greedy rows only need an argmax; on a GPU that is one kernel and one small copy for all rows of a
step, where a copy per session (or of every row's [vocab] logits) would cost more than the step
itself. Rows a sampler needs in full are copied one at a time, on demand.
"""

from __future__ import annotations

import torch


class StepLogits:
    def __init__(self, rows: torch.Tensor, _parent: "StepLogits | None" = None, _offset: int = 0) -> None:
        self.rows = rows  # [kept rows, vocab], on the forward's device
        self._parent = _parent
        self._offset = _offset
        self._argmax: list[int] | None = None

    def __len__(self) -> int:
        return self.rows.shape[0]

    def argmax(self, row: int) -> int:
        if self._parent is not None:
            return self._parent.argmax(self._offset + row)
        if self._argmax is None:
            self._argmax = self.rows.argmax(-1).tolist()
        return self._argmax[row]

    def __getitem__(self, row: int | slice) -> "torch.Tensor | StepLogits":
        """An int: that row as float32 on the CPU, the form the sampler takes. A slice: a view
        that shares this step's single argmax."""
        if isinstance(row, slice):
            start, _, _ = row.indices(len(self))
            root = self._parent or self
            return StepLogits(self.rows[row], root, self._offset + start)
        return self.rows[row].float().cpu()


def as_step_logits(logits: "torch.Tensor | StepLogits") -> StepLogits:
    return logits if isinstance(logits, StepLogits) else StepLogits(logits)
