"""Weight-only int8 CPU linears: a row's result does not depend on its batch, the error is bounded,
and the runtime serves with them (deterministic streams bitwise alone or batched)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from cuda_models import run_sessions
from kakeya.runtime.common.config import EngineConfig
from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.cpu.int8_linear import Int8Linear, available
from kakeya.runtime.engine.runner import ModelRunner
from tiny_models import load_tiny, make_pool, prompt

pytestmark = pytest.mark.skipif(not available(), reason="torch's weight-only int8 CPU matmul is not in this build")


def test_a_rows_result_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 200)
    held = Int8Linear(linear)
    rows = torch.randn(130, 96) * torch.logspace(-2, 2, 130)[:, None]  # rows of very different ranges
    alone = torch.cat([held(rows[i:i + 1]) for i in range(130)])
    for count in (*range(2, 65), 100, 130):
        assert torch.equal(held(rows[:count]), alone[:count]), count
    assert torch.equal(held(torch.cat((rows[5:6], rows[:7].flip(0) * 1e3)))[0], alone[5])
    exact = linear(rows)
    relative = ((alone - exact).norm(dim=1) / exact.norm(dim=1)).max().item()
    assert relative < 0.02


def test_a_fused_module_gives_each_parts_columns_bitwise():
    torch.manual_seed(1)
    parts = [Int8Linear(torch.nn.Linear(64, n)) for n in (64, 32, 32)]
    x = torch.randn(9, 64)
    separate = torch.cat([part(x) for part in parts], dim=1)
    assert torch.equal(Int8Linear.fused(parts)(x), separate)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_the_runtime_serves_on_int8_weights_deterministically(arch):
    loaded, _ = load_tiny(arch)
    runner = ModelRunner(loaded, deterministic=True, cpu_weights="int8")
    runner.warm_up(0)
    assert runner.cpu_decoder is not None
    assert runner.paths()["weights_held_as"] == ("int8 per-channel (bf16 scales; bf16 activations) for 15 linears, "
                                                 "float32 elsewhere")
    assert isinstance(loaded.model.lm_head, Int8Linear)
    prompts = [prompt(19 + 5 * i, seed=i) for i in range(4)]
    together = run_sessions(runner, make_pool(loaded), prompts, 16)
    alone = [run_sessions(runner, make_pool(loaded), [p], 16, split=lambda i: [3, len(p) - 3])[0] for p in prompts[:2]]
    runner.shutdown()
    assert alone == together[:2]


def test_int8_weights_need_a_float32_cpu_model():
    loaded, _ = load_tiny("llama")
    with pytest.raises(FailedPrecondition, match="int8 CPU weights need a float32 model on the CPU"):
        ModelRunner(dataclasses.replace(loaded, dtype=torch.bfloat16), deterministic=False, cpu_weights="int8")
    meta = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model).to("meta"), device=torch.device("meta"))
    with pytest.raises(FailedPrecondition, match="not torch.float32 on meta"):
        ModelRunner(meta, deterministic=False, cpu_weights="int8")
    with pytest.raises(ValueError, match="cpu_weights must be one of float32, int8, int4, not 'int2'"):
        EngineConfig(cpu_weights="int2")
