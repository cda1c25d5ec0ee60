"""4-bit CPU linears in groups of 32: a Q4_1-style grid is held as it was, a row's result does not
depend on its batch, the error is bounded, and the runtime serves with them (deterministic streams
bitwise alone or batched, the CPU decoder's fused matrices equal to the modules one by one)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from cuda_models import run_sessions
from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.cpu import held_weights
from kakeya.runtime.cpu.int4_linear import GROUP, Int4Linear, available, int4_groups
from kakeya.runtime.cpu.int8_linear import Int8Linear
from kakeya.runtime.engine.runner import ModelRunner
from tiny_models import load_tiny, make_pool, prompt

pytestmark = pytest.mark.skipif(not available(), reason="torch's int4 CPU matmul is not in this build")


def q4_1_weights(out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights d * q + m per group of 32, with fp16 d and m as a GGUF Q4_1 block stores them and
    every group's q spanning 0..15; returns (weights, q, d, m)."""
    generator = torch.Generator().manual_seed(3)
    groups = in_features // GROUP
    q = torch.randint(0, 16, (out_features, groups, GROUP), generator=generator)
    q[..., 0], q[..., 1] = 0, 15
    d = (torch.rand(out_features, groups, generator=generator) * 0.02 + 1e-3).half().float()
    m = (torch.randn(out_features, groups, generator=generator) * 0.1).half().float()
    weights = d[..., None] * q + m[..., None]
    return weights.reshape(out_features, in_features), q.reshape(out_features, in_features), d, m


def test_a_q4_1_grid_is_held_as_it_was_up_to_bf16_scales_and_zeros():
    weights, q, d, m = q4_1_weights(48, 128)
    held_q, scales_and_zeros = int4_groups(weights)
    assert torch.equal(held_q, q.to(torch.int32))
    scale, zero = scales_and_zeros[..., 0].t().float(), scales_and_zeros[..., 1].t().float()
    assert torch.equal(scale, d.to(torch.bfloat16).float())
    assert torch.equal(zero, (m + 8 * scale).to(torch.bfloat16).float())
    held = Int4Linear(_linear_of(weights))
    dequantized = ((held_q.reshape(48, 4, GROUP).float() - 8) * scale[..., None] + zero[..., None]).reshape(48, 128)
    # Only the bf16 rounding of scale and zero moves a weight: by at most 15 steps' and one zero's worth.
    bound = (15 * (scale - d).abs() + (zero - 8 * scale - m).abs()).amax().item()
    assert (dequantized - weights).abs().max().item() <= bound + 1e-6
    x = torch.randn(5, 128)
    expected = x.to(torch.bfloat16).float() @ dequantized.t()
    assert torch.allclose(held(x), expected, rtol=1e-2, atol=1e-2)


def _linear_of(weights: torch.Tensor) -> torch.nn.Linear:
    linear = torch.nn.Linear(weights.shape[1], weights.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weights)
    return linear


def test_a_rows_result_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 208)
    held = Int4Linear(linear)
    rows = torch.randn(130, 96) * torch.logspace(-2, 2, 130)[:, None]
    alone = torch.cat([held(rows[i:i + 1]) for i in range(130)])
    for count in (*range(2, 65), 100, 130):
        assert torch.equal(held(rows[:count]), alone[:count]), count
    assert torch.equal(held(torch.cat((rows[5:6], rows[:7].flip(0) * 1e3)))[0], alone[5])
    exact = linear(rows)
    relative = ((alone - exact).norm(dim=1) / exact.norm(dim=1)).max().item()
    assert relative < 0.15  # uniform random weights: the coarsest case for 16 levels a group


def test_the_lm_head_and_other_shapes_are_held_as_int8():
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 64), torch.nn.Linear(64, 40))
    assert held_weights.describe(model, "int4") == ("int4 groups of 32 (bf16 scales and zeros; bf16 activations) "
                                                    "for 1 linear, int8 per-channel (bf16 scales; bf16 activations) "
                                                    "for 2 linears, float32 elsewhere")
    held_weights.quantize(model, "int4")
    assert [type(m) for m in model] == [Int4Linear, Int8Linear, Int8Linear]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_the_runtime_serves_on_int4_weights_deterministically(arch):
    loaded, _ = load_tiny(arch)
    generic_model = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    runner = ModelRunner(loaded, deterministic=True, cpu_weights="int4")
    runner.warm_up(0)
    assert runner.cpu_decoder is not None and runner.cpu_decoder.layers[0].gate_up is not None
    assert runner.paths()["weights_held_as"].startswith("int4 groups of 32 (bf16 scales and zeros; bf16 activations) "
                                                        "for 14 linears, int8 per-channel")
    assert isinstance(loaded.model.lm_head, Int8Linear) and isinstance(loaded.model.model.layers[0].mlp.up_proj,
                                                                       Int4Linear)
    prompts = [prompt(19 + 5 * i, seed=i) for i in range(4)]
    together = run_sessions(runner, make_pool(loaded), prompts, 16)
    alone = [run_sessions(runner, make_pool(loaded), [p], 16, split=lambda i: [3, len(p) - 3])[0] for p in prompts[:2]]
    runner.shutdown()
    assert alone == together[:2]
    generic = ModelRunner(generic_model, deterministic=True, cpu_weights="int4", cpu_decoder=False)
    generic.warm_up(0)
    assert generic.cpu_decoder is None
    assert run_sessions(generic, make_pool(generic_model), prompts, 16) == together
    generic.shutdown()


def test_int4_weights_need_a_float32_cpu_model():
    loaded, _ = load_tiny("llama")
    with pytest.raises(FailedPrecondition, match="int4 CPU weights need a float32 model on the CPU, not "
                                                 "torch.float16 on cpu"):
        ModelRunner(dataclasses.replace(loaded, dtype=torch.float16), deterministic=True, cpu_weights="int4")


def test_fused_matrices_compute_their_parts_bitwise_or_are_not_fused():
    torch.manual_seed(2)
    x = torch.randn(7, 64)
    parts = [Int4Linear(torch.nn.Linear(64, n)) for n in (128, 64)]
    separate = torch.cat([part(x) for part in parts], dim=1)
    fused = held_weights.fuse(parts)
    assert torch.equal(fused(x), separate) and torch.equal(torch.cat([part(x) for part in parts], dim=1), separate)
    # Widths that do not fit the packed layout's column blocks: joined, they would compute other weights.
    assert held_weights.fuse([Int4Linear(torch.nn.Linear(64, n)) for n in (32, 32, 64)]) is None
