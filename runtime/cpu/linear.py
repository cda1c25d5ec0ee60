"""CPU linears on MKL's packed weights.

Why packed:
- Speed. For a few rows MKL's sgemm re-packs the weight on every call; with the weight packed once
  at start-up, decode-sized GEMMs take about half the time. From a few hundred rows on (for the
  wide lm_head already at 64 rows) the plain GEMM is faster again.
- Determinism. A packed GEMM gives a row the same bits at every row count (2 to 1024 tried, and 1
  from 576 features up) and whatever the other rows hold. The plain one does not on every CPU: on
  an AVX-512 Xeon some shapes change from 16 or 64 rows.
  So deterministic mode runs every linear packed, at any size, and needs no padded row count.

Fast mode runs packed up to FAST_MAX_ROWS rows (decode steps, small appends) and plain above.
The packed copy adds about the weights' own size to the resident memory. Figures: docs/determinism.md.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

FAST_MAX_ROWS = 64
try:  # the overload itself: the packet's per-call resolution is a measurable share of a small call
    _MKL_LINEAR = torch.ops.mkl._mkl_linear.default
except (AttributeError, RuntimeError):
    _MKL_LINEAR = None  # no MKL packed sgemm in this build: available() is False
PACK_ROWS_HINT = 8  # MKL's packing takes a row-count hint; the packed weight serves any count


def available(model: torch.nn.Module) -> bool:
    """MKL's packed sgemm exists in this build (x86 builds; not Apple's), and the model is fp32 on CPU."""
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32 or not torch.backends.mkl.is_available():
        return False
    try:
        torch.ops.mkl._mkl_reorder_linear_weight  # noqa: B018 - raises where the op is not built
    except (AttributeError, RuntimeError):
        return False
    return True


class PackedLinear(torch.nn.Linear):
    """Same weight and bias Parameters as the linear it replaces (tied weights stay tied)."""

    def __init__(self, linear: torch.nn.Linear, mode: "PackedMode") -> None:
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.mode = mode
        with torch.inference_mode():
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight.detach(), PACK_ROWS_HINT)

    def __deepcopy__(self, memo: dict) -> torch.nn.Linear:
        """A copy is a plain nn.Linear: MKL's packed weight is an opaque tensor that cannot be
        copied, and a copied model (a reference model in a test, say) is packed again if it runs
        in the engine."""
        linear = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                                 device="meta")
        linear.weight = copy.deepcopy(self.weight, memo)
        linear.bias = copy.deepcopy(self.bias, memo)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply(x, self.packed, self.weight, self.bias, self.mode.deterministic)


def apply(x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          deterministic: bool) -> torch.Tensor:
    """x @ weight.T + bias over the packed copy of weight, by the mode's rule (module docstring)."""
    out_features, in_features = weight.shape
    rows = x.numel() // in_features
    if not deterministic and rows > FAST_MAX_ROWS:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, in_features)
    if rows == 1 and deterministic:
        # At small shapes (<= 128 features) MKL computes a lone row on another path, whose bits
        # differ from the same row among others; from 2 rows on they agree.
        out = _MKL_LINEAR(flat.expand(2, -1).contiguous(), packed, weight, bias, 2)[:1]
    else:
        out = _MKL_LINEAR(flat if flat.is_contiguous() else flat.contiguous(), packed, weight, bias, rows)
    return out.view(*x.shape[:-1], out_features)


class PackedMode:
    """Which rule the packed linears follow; written by the model thread before each forward."""

    def __init__(self) -> None:
        self.deterministic = False


def pack_linears(model: torch.nn.Module) -> PackedMode:
    """Replaces every nn.Linear of the model with a PackedLinear, once; returns the shared mode."""
    for module in model.modules():
        if isinstance(module, PackedLinear):
            return module.mode
    mode = PackedMode()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, PackedLinear(child, mode))
    return mode
