"""Every tested family on a CUDA device (GPU machine only; skipped elsewhere with the reason).

Full-attention families run on the CUDA row kernels (and graphs); families with sliding-window,
soft-capped or sink layers on the slab path. In float32 greedy streams equal transformers'; in
bfloat16 deterministic mode (full-attention families: the others are refused in it on CUDA) a
session's stream is bitwise the same alone, among others, and appended in other chunks.
"""

from __future__ import annotations

import pytest
import torch

from cuda_models import pool_for, run_sessions
from family_models import FAMILIES, generate, load_family
from kakeya.runtime.engine.runner import ModelRunner
from tiny_models import prompt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="the CUDA path needs a CUDA device (run on the GPU machine)")


@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_fast_mode_matches_transformers_in_float32(model_type, graphs):
    loaded, reference = load_family(model_type, device="cuda")
    runner = ModelRunner(loaded, deterministic=False, cuda_graphs=graphs)
    kernels = all(layer.plain for layer in loaded.layers)
    assert (runner.cuda is not None) == kernels
    prompts = [prompt(n, seed=n) for n in (1, 9, 30, 77)]
    streams = run_sessions(runner, pool_for(loaded), prompts, 16, split=lambda i: [1, len(prompts[i]) - 1]
                           if len(prompts[i]) > 1 else [1])
    runner.shutdown()
    assert streams == [generate(reference, p, 16) for p in prompts]


KERNEL_FAMILIES = ("gpt2", "granite", "llama", "olmo2", "olmoe", "phi3", "qwen3", "qwen3_moe", "smollm3")


@pytest.mark.parametrize("model_type", KERNEL_FAMILIES)
def test_deterministic_bfloat16_ignores_batch_and_append_pattern(model_type):
    loaded, _ = load_family(model_type, device="cuda", dtype=torch.bfloat16)
    runner = ModelRunner(loaded, deterministic=True)
    pool = pool_for(loaded)
    prompts = [prompt(30 + 7 * i, seed=100 + i) for i in range(5)]
    together = run_sessions(runner, pool, prompts, 24)
    alone = [run_sessions(runner, pool, [p], 24)[0] for p in prompts[:2]]
    uneven = run_sessions(runner, pool, prompts[:2], 24, split=lambda i: [3, 20, len(prompts[i]) - 23])
    runner.shutdown()
    assert alone == together[:2] and uneven == together[:2]
