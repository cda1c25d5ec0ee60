"""The CUDA path: row kernels against SDPA, graphs against eager, and the deterministic mode's promise.

Runs only where a CUDA device is present (the GPU machine); elsewhere every test is skipped with
the reason. Models are small randomly-initialised Qwen3s built in-process: nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cuda_models import CUDA, build, pool_for, prompt, run_sessions
from kakeya.runtime.engine.runner import ModelRunner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="the CUDA path needs a CUDA device (run on the GPU machine)")
@pytest.mark.parametrize("variant", ["dot", "dot_aligned"])
@pytest.mark.parametrize("splits", [1, 16, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_row_kernel_matches_sdpa(dtype, splits, variant):
    from kakeya.runtime.kernels.triton_rows import attend_rows, store_rows

    torch.manual_seed(1)
    layers, kvh, heads, hd = 3, 2, 8, 64
    counts = [1, 7, 64, 300, 1000, 5000]
    slabs = [torch.randn(layers, 2, kvh, n + 37, hd, dtype=dtype, device=CUDA) for n in counts]
    rows = len(counts)
    meta = torch.tensor([[s.data_ptr() for s in slabs], [s.shape[3] for s in slabs],
                         [n - 1 for n in counts], counts], dtype=torch.int64, device=CUDA)
    new_k = torch.randn(rows, kvh, hd, dtype=dtype, device=CUDA)
    new_v = torch.randn(rows, kvh, hd, dtype=dtype, device=CUDA)
    store_rows(new_k, new_v, meta, 1, dtype)
    query = torch.randn(rows, heads, hd, dtype=dtype, device=CUDA)
    out = torch.empty_like(query)
    attend_rows(query, out, torch.arange(rows, device=CUDA), meta, 1, 0.125, kvh, dtype, splits,
                variant=variant)
    for r, (slab, n) in enumerate(zip(slabs, counts)):
        assert torch.equal(slab[1, 0, :, n - 1], new_k[r]) and torch.equal(slab[1, 1, :, n - 1], new_v[r])
        keys, values = slab[1, 0, :, :n].float(), slab[1, 1, :, :n].float()
        expected = F.scaled_dot_product_attention(query[r, :, None].float()[None], keys[None], values[None],
                                                  scale=0.125, enable_gqa=True)[0, :, 0]
        tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(out[r].float(), expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_block_kernel_matches_sdpa(dtype):
    """A 37-row chunk after 900 keys attends in blocks of BLOCK_ROWS rows, causally, next to two decode rows
    that the row kernel serves in the same launch pair."""
    from kakeya.runtime.kernels.triton_blocks import attend_blocks
    from kakeya.runtime.cuda.plan import BLOCK_ROWS
    from kakeya.runtime.kernels.triton_rows import attend_rows

    torch.manual_seed(2)
    layers, kvh, heads, hd, history, chunk = 2, 2, 8, 64, 900, 37
    slabs = [torch.randn(layers, 2, kvh, n, hd, dtype=dtype, device=CUDA) for n in (history + chunk, 50, 3000)]
    counts = [history + i + 1 for i in range(chunk)] + [50, 3000]
    owner = [0] * chunk + [1, 2]
    leads = [min(BLOCK_ROWS, chunk - i) if i % BLOCK_ROWS == 0 else 0 for i in range(chunk)] + [1, 1]
    meta = torch.tensor([[slabs[o].data_ptr() for o in owner], [slabs[o].shape[3] for o in owner],
                         [n - 1 for n in counts], counts, leads], dtype=torch.int64, device=CUDA)
    rows = torch.arange(len(counts), device=CUDA)
    query = torch.randn(len(counts), heads, hd, dtype=dtype, device=CUDA)
    out = torch.full_like(query, float("nan"))
    attend_rows(query, out, rows, meta, 1, 0.125, kvh, dtype, 4, blocks=True)
    attend_blocks(query, out, rows, meta, 1, 0.125, kvh, dtype, BLOCK_ROWS)
    for r, (o, n) in enumerate(zip(owner, counts)):
        keys, values = slabs[o][1, 0, :, :n].float(), slabs[o][1, 1, :, :n].float()
        expected = F.scaled_dot_product_attention(query[r, :, None].float()[None], keys[None], values[None],
                                                  scale=0.125, enable_gqa=True)[0, :, 0]
        tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(out[r].float(), expected, atol=tolerance, rtol=tolerance)


def test_graphs_equal_eager_in_deterministic_mode():
    """10 prompts decoded together: captured graphs give exactly the eager path's tokens."""
    loaded, _ = build(torch.bfloat16)
    prompts = [prompt(5 + 13 * i, seed=i) for i in range(10)]
    results = []
    for graphs in (True, False):
        runner = ModelRunner(loaded, deterministic=True, cuda_graphs=graphs)
        results.append(run_sessions(runner, pool_for(loaded), prompts, 24))
        runner.shutdown()
    assert results[0] == results[1]


def test_deterministic_mode_ignores_batch_and_append_pattern():
    """bf16: a session's greedy stream is the same alone, among 9 others, and appended token by token."""
    loaded, _ = build(torch.bfloat16)
    runner = ModelRunner(loaded, deterministic=True)
    pool = pool_for(loaded)
    prompts = [prompt(40 + 7 * i, seed=100 + i) for i in range(10)]
    together = run_sessions(runner, pool, prompts, 40)
    alone = [run_sessions(runner, pool, [p], 40)[0] for p in prompts[:3]]
    assert alone == together[:3]
    one_by_one = run_sessions(runner, pool, prompts[:2], 40, split=lambda i: [1] * len(prompts[i]))
    assert one_by_one == together[:2]
    uneven = run_sessions(runner, pool, prompts[:2], 40, split=lambda i: [3, 30, len(prompts[i]) - 33])
    assert uneven == together[:2]
    runner.shutdown()


@pytest.mark.parametrize("graphs", [True, False])
def test_fast_mode_matches_transformers_in_float32(graphs):
    loaded, reference = build(torch.float32)
    runner = ModelRunner(loaded, deterministic=False, cuda_graphs=graphs)
    prompts = [prompt(n, seed=n) for n in (1, 9, 30, 77)]
    streams = run_sessions(runner, pool_for(loaded), prompts, 16)
    reference.generation_config.eos_token_id = None
    for p, stream in zip(prompts, streams):
        with torch.no_grad():
            expected = reference.generate(torch.tensor([p], device=CUDA), max_new_tokens=16, do_sample=False)
        assert stream == expected[0, len(p):].tolist()
    runner.shutdown()


@pytest.mark.parametrize("graphs", [True, False])
def test_long_chunks_over_long_histories_match_transformers(graphs):
    """Chunks too long for one row-kernel forward: sliced into several graph replays (graphs on)
    or attended by causal SDPA (eager); both equal transformers in float32, decode included."""
    loaded, reference = build(torch.float32)
    runner = ModelRunner(loaded, deterministic=False, cuda_graphs=graphs)
    prompts = [prompt(1200, seed=5), prompt(40, seed=6)]
    streams = run_sessions(runner, pool_for(loaded), prompts, 12, split=lambda i: [900, 300] if i == 0 else [40])
    reference.generation_config.eos_token_id = None
    for p, stream in zip(prompts, streams):
        with torch.no_grad():
            expected = reference.generate(torch.tensor([p], device=CUDA), max_new_tokens=12, do_sample=False)
        assert stream == expected[0, len(p):].tolist()
    runner.shutdown()



@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_fused_decoder_matches_transformers_in_float32(arch):
    """Both layer forms the fused decoder knows (Q/K norms; attention biases) equal transformers,
    and the fused weights replace the per-projection ones instead of doubling them."""
    loaded, reference = build(torch.float32, arch=arch)
    runner = ModelRunner(loaded, deterministic=False)
    assert runner.cuda.decoder is not None
    attn = loaded.model.model.layers[1].self_attn
    fused = loaded.model.model.layers[1].kakeya_fused
    assert attn.q_proj.weight.data_ptr() == fused.qkv.data_ptr()
    assert attn.v_proj.weight.data_ptr() + attn.v_proj.weight.numel() * 4 == fused.qkv.data_ptr() + fused.qkv.numel() * 4
    prompts = [prompt(n, seed=n) for n in (3, 50, 200)]
    streams = run_sessions(runner, pool_for(loaded), prompts, 16)
    reference.generation_config.eos_token_id = None
    for p, stream in zip(prompts, streams):
        with torch.no_grad():
            expected = reference.generate(torch.tensor([p], device=CUDA), max_new_tokens=16, do_sample=False)
        assert stream == expected[0, len(p):].tolist()
    runner.shutdown()
