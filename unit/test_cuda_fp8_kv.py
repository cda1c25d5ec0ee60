"""fp8 KV slabs (--kv-dtype fp8): stores round and saturate, every attention path reads them back.

GPU machine only (compute capability 8.9+); elsewhere the kernel tests are skipped with the reason,
and the configuration test checks the clear refusal off CUDA.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.forward.session_kv import KVShape, SessionKV, slab_dtype

FP8 = torch.float8_e4m3fn
HAS_FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
needs_fp8_gpu = pytest.mark.skipif(not HAS_FP8_GPU, reason="fp8 slabs need a CUDA device of compute capability 8.9+")


def test_fp8_slabs_are_refused_off_cuda_and_in_bounded_mode():
    with pytest.raises(FailedPrecondition, match="needs a CUDA device; this runtime runs on cpu"):
        slab_dtype("fp8", torch.float32, torch.device("cpu"), bounded=False)
    assert slab_dtype("auto", torch.float32, torch.device("cpu"), bounded=False) == torch.float32
    if torch.cuda.is_available():
        with pytest.raises(FailedPrecondition, match="needs full attention"):
            slab_dtype("fp8", torch.bfloat16, torch.device("cuda"), bounded=True)


def _rounded(x: torch.Tensor) -> torch.Tensor:
    """What an fp8 slab holds for x: saturated at e4m3's largest finite value, then rounded."""
    return x.float().clamp(-448, 448).to(FP8)


@needs_fp8_gpu
def test_store_rounds_and_saturates_and_both_kernels_read_fp8():
    """bf16 queries over fp8 slabs: the row kernel (decode rows) and the block kernel (a 37-row
    chunk) and the SDPA path of long chunks equal SDPA over the slabs' values widened to float32."""
    from kakeya.runtime.forward.rows import RowGroup
    from kakeya.runtime.cuda.attention import _attend_causal
    from kakeya.runtime.kernels.triton_blocks import attend_blocks
    from kakeya.runtime.cuda.plan import BLOCK_ROWS
    from kakeya.runtime.kernels.triton_rows import FP8_BLOCK_N, attend_rows, dot_dtype, store_rows

    cuda = torch.device("cuda")
    torch.manual_seed(3)
    layers, kvh, heads, hd, history, chunk = 2, 2, 8, 64, 900, 37
    slabs = [_rounded(torch.randn(layers, 2, kvh, n, hd, device=cuda)) for n in (history + chunk, 50, 5000)]
    counts = [history + i + 1 for i in range(chunk)] + [50, 4999]
    owner = [0] * chunk + [1, 2]
    leads = [min(BLOCK_ROWS, chunk - i) if i % BLOCK_ROWS == 0 else 0 for i in range(chunk)] + [1, 1]
    meta = torch.tensor([[slabs[o].data_ptr() for o in owner], [slabs[o].shape[3] for o in owner],
                         [n - 1 for n in counts], counts, leads], dtype=torch.int64, device=cuda)
    new_k = torch.randn(len(counts), kvh, hd, dtype=torch.bfloat16, device=cuda) * 3
    new_v = torch.randn(len(counts), kvh, hd, dtype=torch.bfloat16, device=cuda)
    new_k[0, 0, :4] = torch.tensor([1000.0, -1000.0, 448.0, 0.0])  # beyond e4m3's range: saturated, not NaN
    store_rows(new_k, new_v, meta, 1, FP8)
    for r, (o, n) in enumerate(zip(owner, counts)):
        stored = slabs[o][1, :, :, n - 1]
        assert torch.equal(stored[0].view(torch.uint8), _rounded(new_k[r]).view(torch.uint8)), r
        assert torch.equal(stored[1].view(torch.uint8), _rounded(new_v[r]).view(torch.uint8)), r
    assert slabs[0][1, 0, 0, history, :3].float().tolist() == [448.0, -448.0, 448.0]

    rows = torch.arange(len(counts), device=cuda)
    query = torch.randn(len(counts), heads, hd, dtype=torch.bfloat16, device=cuda)
    out = torch.full_like(query, float("nan"))
    dot = dot_dtype(torch.bfloat16, FP8)
    attend_rows(query, out, rows, meta, 1, 0.125, kvh, dot, 4, blocks=True, variant="dot_aligned", kv_dtype=FP8)
    attend_blocks(query, out, rows, meta, 1, 0.125, kvh, dot, BLOCK_ROWS, FP8)
    lone = torch.full_like(query, float("nan"))
    attend_rows(query, lone, rows[-1:], meta, 1, 0.125, kvh, dot, 32, block=FP8_BLOCK_N, variant="dot_aligned",
                blocks=True, kv_dtype=FP8)  # the fast mode's lone decode row, on wider key tiles
    # The SDPA path of long chunks (cuda_attention._attend_causal) widens the slab it reads.
    kv = SessionKV(KVShape(layers, kvh, hd, FP8, cuda), 0, 0)
    kv.slab = slabs[0]
    by_sdpa = torch.full_like(query, float("nan"))
    _attend_causal(RowGroup(kv, 0, chunk, history), 1, query, by_sdpa, 0.125)
    for r, (o, n) in enumerate(zip(owner, counts)):
        keys, values = slabs[o][1, 0, :, :n].float(), slabs[o][1, 1, :, :n].float()
        expected = F.scaled_dot_product_attention(query[r, :, None].float()[None], keys[None], values[None],
                                                  scale=0.125, enable_gqa=True)[0, :, 0]
        torch.testing.assert_close(out[r].float(), expected, atol=2e-2, rtol=2e-2)
        if r == len(counts) - 1:
            torch.testing.assert_close(lone[r].float(), expected, atol=2e-2, rtol=2e-2)
        if r < chunk:
            torch.testing.assert_close(by_sdpa[r].float(), expected, atol=2e-2, rtol=2e-2)


def _fp8_pool(loaded) -> KVPool:
    return KVPool(KVShape(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, FP8, loaded.device),
                  1 << 32, 64, 0, 0, 256)


@needs_fp8_gpu
def test_deterministic_mode_keeps_its_promise_on_fp8_slabs():
    """Every row reads its keys back from the slab after the store, so the rounding is the same
    however the history arrived: alone, batched, or token by token."""
    from cuda_models import build, prompt, run_sessions
    from kakeya.runtime.engine.runner import ModelRunner

    loaded, _ = build(torch.bfloat16)
    runner = ModelRunner(loaded, deterministic=True, kv_dtype=FP8)
    pool = _fp8_pool(loaded)
    prompts = [prompt(40 + 7 * i, seed=200 + i) for i in range(6)]
    together = run_sessions(runner, pool, prompts, 32)
    assert [run_sessions(runner, pool, [p], 32)[0] for p in prompts[:2]] == together[:2]
    one_by_one = run_sessions(runner, pool, prompts[:2], 32, split=lambda i: [1] * len(prompts[i]))
    assert one_by_one == together[:2]
    runner.shutdown()


@needs_fp8_gpu
@pytest.mark.parametrize("graphs", [True, False])
def test_fast_mode_on_fp8_slabs_stays_close_to_model_dtype_slabs(graphs):
    """Fast mode's paths over fp8 slabs (row, block and, eagerly, SDPA for a long chunk) give the
    logits of bf16 slabs up to the rounding: a kernel reading fp8 bytes as bf16 would not. The
    300-row chunk over 900 keys attends in blocks; graphs on, the decode rows replay a graph."""
    from cuda_models import build, pool_for, prompt
    from kakeya.runtime.engine.runner import ModelRunner, StepRow
    from kakeya.runtime.engine.sampler import Sampler, SamplingParams

    loaded, _ = build(torch.bfloat16)
    prompts = [prompt(1200, seed=7), prompt(40, seed=8), prompt(3, seed=9)]
    logits = []
    for kv_dtype, pool in ((None, pool_for(loaded)), (FP8, _fp8_pool(loaded))):
        runner = ModelRunner(loaded, deterministic=False, cuda_graphs=graphs, kv_dtype=kv_dtype)
        kvs = [pool.allocate() for _ in prompts]
        for kv, p in zip(kvs, prompts):
            pool.reserve(kv, len(p) + 2)
        runner.feed([StepRow(kvs[0], tuple(prompts[0][:900]), None)])
        rows = runner.feed([StepRow(kvs[0], tuple(prompts[0][900:]), Sampler(SamplingParams())),
                            StepRow(kvs[1], tuple(prompts[1]), Sampler(SamplingParams())),
                            StepRow(kvs[2], tuple(prompts[2]), Sampler(SamplingParams()))])
        decode = runner.feed([StepRow(kv, (5,), Sampler(SamplingParams())) for kv in kvs])
        logits.append(torch.cat([rows.rows, decode.rows]).float())
        runner.shutdown()
    reference, fp8 = logits
    assert torch.isfinite(fp8).all()
    for row_ref, row_fp8 in zip(reference, fp8):
        cosine = F.cosine_similarity(row_ref, row_fp8, dim=0).item()
        assert cosine > 0.99, cosine
