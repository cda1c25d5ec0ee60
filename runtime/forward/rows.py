"""A step's rows as the forward sees them: which session each run of rows feeds, at which positions.

Pure data shared by the engine and the CPU and CUDA forwards; it travels to the registered
attention function as a forward kwarg (engine/attention_hook.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from kakeya.runtime.forward.session_kv import SessionKV

@dataclass(frozen=True, slots=True)
class RowGroup:
    """Consecutive rows [row_start, row_start + num_rows) of one session, at positions from first_position."""

    kv: SessionKV
    row_start: int
    num_rows: int
    first_position: int


@dataclass(frozen=True, slots=True)
class SlabCut:
    """A full-attention group's slab views for a whole step, cut once instead of once per layer
    and row: indexing that often is a sizeable share of a small model's CPU decode step."""

    new_keys: torch.Tensor  # [layers, kv_heads, num_rows, head_dim]: where the group's rows go
    new_values: torch.Tensor
    # [layers, kv_heads, end, head_dim]: every key the group's last row sees, or with a bucketed
    # plan every entry its calls read (up to the capacity)
    keys: torch.Tensor
    values: torch.Tensor


def cut_slab(group: RowGroup, plan: Any) -> SlabCut | None:
    """None for a bounded-mode group, whose visible keys are not a prefix of the slab."""
    kv = group.kv
    if kv.window_tokens:
        return None
    lo = kv.storage_index(group.first_position)
    hi = lo + group.num_rows
    end = hi if plan is None else max(hi, min(plan.calls[-1].num_keys, kv.capacity))
    return SlabCut(kv.slab[:, 0, :, lo:hi], kv.slab[:, 1, :, lo:hi], kv.slab[:, 0, :, :end], kv.slab[:, 1, :, :end])


@dataclass(frozen=True, slots=True)
class StepLayout:
    groups: tuple[RowGroup, ...]
    num_rows: int  # including padding rows, which attend to nothing and write nothing
    deterministic: bool
    cuda: Any = None  # KernelMeta (cuda/row_meta.py) when the step runs on the CUDA kernels
    # Deterministic CPU steps: per group, its bucketed calls (cpu/plan.py), or None for a
    # bounded-mode group, which attends row by row.
    cpu_plans: tuple[Any, ...] | None = None
    cpu_cuts: tuple[SlabCut | None, ...] | None = None  # CPU steps: per group, cut_slab(group)
    cpu_views: Any = None  # CPU steps: cpu/plan.py step_views (deterministic) or decode_views
