"""int8-held CPU linears: a row's result does not depend on its batch, the error is bounded, and
the runtime serves with them (deterministic streams bitwise alone or batched)."""

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

pytestmark = pytest.mark.skipif(not available(), reason="torch's fbgemm quantized engine is not in this build")


def test_a_rows_result_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 200)
    held = Int8Linear(linear)
    rows = torch.randn(24, 96) * torch.logspace(-2, 2, 24)[:, None]  # rows of very different ranges
    alone = torch.cat([held(rows[i:i + 1]) for i in range(24)])
    for count in (2, 5, 8, 17, 24):
        assert torch.equal(held(rows[:count]), alone[:count])
    exact = linear(rows)
    relative = ((alone - exact).norm(dim=1) / exact.norm(dim=1)).max().item()
    assert relative < 0.03


def test_the_runtime_serves_on_int8_weights_deterministically():
    loaded, _ = load_tiny("llama")
    loaded = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    runner = ModelRunner(loaded, deterministic=True, cpu_int8_weights=True)
    runner.warm_up(0)
    assert runner.cpu_decoder is not None and runner.paths()["weights_held_as"].startswith("int8 linears")
    assert isinstance(loaded.model.lm_head, Int8Linear)
    prompts = [prompt(19 + 5 * i, seed=i) for i in range(4)]
    together = run_sessions(runner, make_pool(loaded), prompts, 16)
    alone = [run_sessions(runner, make_pool(loaded), [p], 16, split=lambda i: [3, len(p) - 3])[0] for p in prompts[:2]]
    runner.shutdown()
    assert alone == together[:2]


def test_int8_weights_need_a_float32_cpu_model():
    loaded, _ = load_tiny("llama")
    with pytest.raises(FailedPrecondition, match="int8 CPU weights need a float32 model on the CPU"):
        ModelRunner(dataclasses.replace(loaded, dtype=torch.bfloat16), deterministic=False, cpu_int8_weights=True)
    with pytest.raises(ValueError, match="cpu_weights must be one of float32, int8"):
        EngineConfig(cpu_weights="int4")
