"""CPU linears on MKL's packed weights: tied weights stay tied, fast mode stays close to F.linear,
and deterministic mode gives a row the same bits at any row count and whatever else is in the step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from kakeya.runtime.cpu import linear as cpu_linear
from tiny_models import load_tiny

pytestmark = pytest.mark.skipif(
    not cpu_linear.available(torch.nn.Linear(8, 8)), reason="this torch build has no MKL packed sgemm (non-x86)")


def test_packing_keeps_parameters_and_is_done_once():
    loaded, _ = load_tiny("llama")
    model = loaded.model
    model.lm_head.weight = model.get_input_embeddings().weight  # tied, as in SmolLM2 and Qwen3
    weights = {name: m.weight for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    mode = cpu_linear.pack_linears(model)
    packed = {name: m for name, m in model.named_modules() if isinstance(m, cpu_linear.PackedLinear)}
    assert packed.keys() == weights.keys() and packed
    assert all(packed[name].weight is weight for name, weight in weights.items())
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert cpu_linear.pack_linears(model) is mode  # a second runner on the same model re-uses it
    assert all(type(m.weight) is torch.nn.Parameter for m in packed.values())
    # A deep copy (a test's reference model) is plain transformers again, tied weights included.
    twin = copy.deepcopy(model)
    assert not any(isinstance(m, cpu_linear.PackedLinear) for m in twin.modules())
    assert twin.lm_head.weight is twin.get_input_embeddings().weight
    assert torch.equal(twin.model.layers[0].mlp.down_proj.weight, model.model.layers[0].mlp.down_proj.weight)
    assert cpu_linear.pack_linears(twin) is not mode


@pytest.mark.parametrize("shape", [(64, 48), (200, 48), (48, 130), (1536, 576)])
def test_deterministic_rows_do_not_depend_on_the_step(shape):
    torch.manual_seed(0)
    linear = torch.nn.Linear(shape[1], shape[0])
    mode = cpu_linear.PackedMode()
    mode.deterministic = True
    packed = cpu_linear.PackedLinear(linear, mode)
    row = torch.randn(shape[1])
    with torch.inference_mode():
        alone = packed(row[None])
        for count, at in ((3, 1), (8, 7), (17, 12), (64, 40), (300, 299)):
            batch = torch.randn(count, shape[1])
            batch[at] = row
            assert torch.equal(packed(batch[None])[0, at], alone[0]), (count, at)
        torch.testing.assert_close(alone, F.linear(row[None], linear.weight, linear.bias), rtol=1e-5, atol=1e-5)


def test_fast_mode_matches_plain_linear_at_every_size():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 160)
    packed = cpu_linear.PackedLinear(linear, cpu_linear.PackedMode())
    with torch.inference_mode():
        for count in (1, 8, 13, cpu_linear.FAST_MAX_ROWS, 100):
            x = torch.randn(2, count, 96)
            torch.testing.assert_close(packed(x), F.linear(x, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
        big = torch.randn(cpu_linear.FAST_MAX_ROWS + 1, 96)
        assert torch.equal(packed(big), F.linear(big, linear.weight, linear.bias))  # plain GEMM above the limit
