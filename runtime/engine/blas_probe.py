"""Does this machine's GEMM give a row one result whatever the row count? Deterministic mode on CPU
rests on it: a step is padded to a multiple of 8 rows, not to one fixed shape.

MKL on the AMD EPYC first measured kept a row's result fixed from 8 rows up. The same build on an
Intel Xeon (AVX-512) gives one result for 8-15 rows and another from 16 up, at some shapes only.
At start-up the probe runs each of the model's linear shapes at a few row counts and names those
that differ, so the log says when the bitwise promise does not hold on this machine.
"""

from __future__ import annotations

import structlog
import torch
import torch.nn.functional as F

log = structlog.get_logger(__name__)

PROBE_ROWS = (8, 16, 24, 64)  # the padded step sizes of a few sessions' decode and prefill


def row_dependent_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(out, in) shapes of the model's linears whose first rows change with the row count."""
    linears: dict[tuple[int, int], torch.nn.Linear] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            linears.setdefault(tuple(module.weight.shape), module)
    generator = torch.Generator().manual_seed(0)
    found = []
    with torch.inference_mode():
        for shape, linear in sorted(linears.items()):
            x = torch.randn(max(PROBE_ROWS), shape[1], generator=generator).to(linear.weight)
            first = F.linear(x[:PROBE_ROWS[0]], linear.weight, linear.bias)
            if any(not torch.equal(F.linear(x[:n], linear.weight, linear.bias)[:PROBE_ROWS[0]], first)
                   for n in PROBE_ROWS[1:]):
                found.append(shape)
    return found


def warn_if_row_dependent(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Logs a warning naming the shapes that break the deterministic mode's premise here."""
    shapes = row_dependent_shapes(model)
    if shapes:
        log.warning("deterministic_mode_not_bitwise_on_this_cpu",
                    reason="this CPU's GEMM gives a row different results at different row counts; greedy "
                           "streams usually still match, but bitwise equality across batches is not guaranteed",
                    shapes=[f"{o}x{i}" for o, i in shapes])
    return shapes
