"""CPU linear layers on oneDNN with each weight reordered once, when the model runner is built.

Two reasons. Speed: plain `F.linear` (MKL) repacks the weight on every call, which at a few rows
costs about as much as the product (measured alone: SmolLM2's GEMMs at 8 rows 1.2-2x faster
prepacked, its lm_head 2x; a whole 8-row step gains less, its attention and norms unchanged).
Determinism: with a prepacked weight, a row's result does not depend on how many rows share the
call once there are at least MIN_INVARIANT_ROWS of them; MKL's results change between 8 and 16
rows on some CPUs. Tested in unit/test_cpu_linear.py.
"""

from __future__ import annotations

import torch

# From this many rows on, a row's output is bitwise the same whatever the row count (measured with
# oneDNN 3.12 on AVX-512 for every GEMM shape of SmolLM2; one row takes another kernel).
MIN_INVARIANT_ROWS = 2


def is_supported(model: torch.nn.Module) -> bool:
    """fp32 models on the CPU, where torch has oneDNN and its inference linear op."""
    parameter = next(model.parameters(), None)
    return (
        parameter is not None
        and parameter.device.type == "cpu"
        and parameter.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def prepack_linears(model: torch.nn.Module) -> bool:
    """Routes every nn.Linear of the model through a prepacked oneDNN weight; returns whether it did.

    The packed weight is a copy taken now: weights changed later would not be seen, so this runs
    once the model is loaded. Modules already routed (shared with a draft model) are left alone.
    A deep copy of the model (a reference model in tests and benchmarks) runs the stock linears.
    """
    if not is_supported(model):
        return False
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = PrepackedLinear
            module.packed = _PackedWeight(torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), None))
    return True


class _PackedWeight:
    """An opaque oneDNN tensor, which can be neither copied nor pickled: copies are None."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def __deepcopy__(self, memo) -> None:
        return None

    def __reduce__(self):
        return type(None), ()


class PrepackedLinear(torch.nn.Linear):
    packed: _PackedWeight | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One row (fast mode's lone decode row; deterministic steps never have one): MKL's gemv
        # is faster than oneDNN there (46 vs 61 ms a SmolLM2 step).
        if self.packed is None or x.numel() == x.shape[-1]:
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed.tensor, self.bias, "none", [], "")
