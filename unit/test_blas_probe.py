"""The start-up probe of deterministic mode's premise: it names exactly the linear shapes whose
row results change with the row count on this machine (which ones do depends on the CPU's BLAS)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kakeya.runtime.engine.blas_probe import PROBE_ROWS, row_dependent_shapes


def test_probe_names_exactly_the_row_dependent_shapes():
    torch.manual_seed(0)
    # SmolLM2's MLP and lm_head shapes (row-dependent under MKL on some Intel CPUs) and a square one.
    model = torch.nn.Sequential(torch.nn.Linear(576, 1536, bias=False), torch.nn.Linear(1536, 576, bias=False),
                                torch.nn.Linear(576, 576), torch.nn.Linear(576, 4096, bias=False))
    found = row_dependent_shapes(model)
    generator = torch.Generator().manual_seed(7)
    for linear in model:
        x = torch.randn(max(PROBE_ROWS), linear.in_features, generator=generator)
        first = F.linear(x[:PROBE_ROWS[0]], linear.weight, linear.bias)
        dependent = any(not torch.equal(F.linear(x[:n], linear.weight, linear.bias)[:PROBE_ROWS[0]], first)
                        for n in PROBE_ROWS[1:])
        assert (tuple(linear.weight.shape) in found) == dependent, linear
