"""Prepacked CPU linears: same values as nn.Linear, and row results independent of the row count.

Deterministic mode pads a step only to MIN_INVARIANT_ROWS rows because of the second property;
this test is what says it holds on the machine it runs on.
"""

from __future__ import annotations

import copy

import pytest
import torch

from kakeya.runtime.cpu_linear import MIN_INVARIANT_ROWS, is_supported, prepack_linears

# (out, in) of every GEMM in SmolLM2-135M: q/o, k/v, gate/up, down, lm_head.
SMOLLM2_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]
ROW_COUNTS = [MIN_INVARIANT_ROWS, 3, 5, 7, 8, 9, 16, 17, 64, 129, 1024]

pytestmark = pytest.mark.skipif(not is_supported(torch.nn.Linear(2, 2)), reason="needs torch with oneDNN")


def _linear(out_features: int, in_features: int, bias: bool = False) -> torch.nn.Linear:
    torch.manual_seed(out_features + in_features)
    return torch.nn.Linear(in_features, out_features, bias=bias).eval()


@pytest.mark.parametrize("shape", SMOLLM2_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_rows_result_does_not_depend_on_the_row_count(shape):
    layer = torch.nn.Sequential(_linear(*shape))
    assert prepack_linears(layer)
    x = torch.randn(2048, shape[1], generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = layer(x)
        for rows in ROW_COUNTS:
            for start in (0, 5, 1000):
                part = layer(x[start:start + rows])
                assert torch.equal(part, full[start:start + rows]), (rows, start)
            # The layout the model uses: [1, T, features].
            assert torch.equal(layer(x[None, :rows])[0], full[:rows]), rows


def test_values_match_nn_linear_with_bias():
    plain = _linear(96, 64, bias=True)
    packed = torch.nn.Sequential(_linear(96, 64, bias=True))
    assert prepack_linears(packed)
    x = torch.randn(1, 12, 64)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-5, atol=1e-5)


def test_a_single_row_runs_the_stock_linear():
    model = torch.nn.Sequential(_linear(96, 64))
    assert prepack_linears(model)
    x = torch.randn(1, 1, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), torch.nn.functional.linear(x, model[0].weight))


def test_prepacking_twice_keeps_the_first_packed_weight():
    model = torch.nn.Sequential(_linear(8, 8))
    assert prepack_linears(model)
    packed = model[0].packed
    assert prepack_linears(model)
    assert model[0].packed is packed


def test_a_deep_copy_runs_the_stock_linear():
    model = torch.nn.Sequential(_linear(8, 8))
    assert prepack_linears(model)
    copied = copy.deepcopy(model)
    assert copied[0].packed is None
    x = torch.randn(3, 8)
    with torch.inference_mode():
        assert torch.equal(copied(x), torch.nn.functional.linear(x, model[0].weight, model[0].bias))
        torch.testing.assert_close(copied(x), model(x), rtol=1e-5, atol=1e-5)


def test_other_dtypes_are_left_alone():
    model = torch.nn.Sequential(_linear(8, 8)).to(torch.bfloat16)
    assert not prepack_linears(model)
    assert type(model[0]) is torch.nn.Linear
