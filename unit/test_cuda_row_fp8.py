"""The lone fp8 row's CUDA kernel (cuda_row_fp8): same attention as the reference and the Triton
kernel, rows of blocks left alone, and a decoding session's logits unchanged by it.

GPU machine only (compute capability 8.9+ and NVRTC through torch); elsewhere skipped with the reason.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
HAS_FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
needs_fp8_gpu = pytest.mark.skipif(not HAS_FP8_GPU, reason="fp8 slabs need a CUDA device of compute capability 8.9+")


@needs_fp8_gpu
@pytest.mark.parametrize("group", [1, 2, 4, 8])
def test_kernel_equals_sdpa_and_the_triton_kernel_and_skips_block_rows(group):
    """Rows over 1 to 5,000 keys (one split to all sixteen, a partial last chunk, warps with no
    chunk) equal SDPA over the slab's values widened to float32; rows that lead or follow a block
    are not written."""
    from kakeya.runtime.kernels import fp8_row as cuda_row_fp8
    from kakeya.runtime.kernels.triton_rows import FP8_BLOCK_N, attend_rows

    cuda = torch.device("cuda")
    torch.manual_seed(group)
    layers, kvh, hd = 2, 2, 128
    heads = kvh * group
    counts = [1, 17, 300, 4999, 5000, 40, 41]
    leads = [1, 1, 1, 1, 1, 2, 0]  # the last two rows form a block: the block kernel's
    slabs = [(torch.randn(layers, 2, kvh, n + 16, hd, device=cuda) * 2).clamp(-448, 448).to(FP8) for n in counts]
    meta = torch.tensor([[s.data_ptr() for s in slabs], [s.shape[3] for s in slabs], [n - 1 for n in counts], counts,
                         leads], dtype=torch.int64, device=cuda)
    rows = torch.arange(len(counts), device=cuda)
    query = (torch.randn(len(counts), heads, hd, device=cuda) * 3).to(torch.bfloat16)
    assert cuda_row_fp8.eligible(query, kvh, FP8), "NVRTC or the kernel's compile failed: see the log"
    out = torch.full_like(query, float("nan"))
    cuda_row_fp8.attend_lone(query, out, rows, meta, 1, hd ** -0.5, kvh, True)
    by_triton = torch.full_like(query, float("nan"))
    attend_rows(query, by_triton, rows, meta, 1, hd ** -0.5, kvh, torch.float16, 32, block=FP8_BLOCK_N,
                variant="dot_aligned", blocks=True, kv_dtype=FP8)
    torch.cuda.synchronize()
    for r, n in enumerate(counts):
        if leads[r] != 1:
            assert torch.isnan(out[r]).all(), r
            continue
        keys, values = slabs[r][1, 0, :, :n].float(), slabs[r][1, 1, :, :n].float()
        expected = F.scaled_dot_product_attention(query[r, :, None].float()[None], keys[None], values[None],
                                                  scale=hd ** -0.5, enable_gqa=True)[0, :, 0]
        torch.testing.assert_close(out[r].float(), expected, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(out[r].float(), by_triton[r].float(), atol=2e-2, rtol=2e-2)


@needs_fp8_gpu
@pytest.mark.parametrize("graphs", [True, False])
def test_a_decoding_session_gives_the_triton_kernels_logits(graphs, monkeypatch):
    """Fast mode over fp8 slabs, one session decoding (the lone row): the CUDA kernel's logits
    equal the Triton kernel's up to the order of the sums, in graphs and eagerly."""
    from cuda_models import build, prompt
    from kakeya.runtime.kernels import fp8_row as cuda_row_fp8
    from kakeya.runtime.engine.kv_pool import KVPool
    from kakeya.runtime.forward.session_kv import KVShape
    from kakeya.runtime.engine.runner import ModelRunner, StepRow
    from kakeya.runtime.engine.sampler import Sampler, SamplingParams

    loaded, _ = build(torch.bfloat16, head_dim=128)
    probe = torch.empty(1, loaded.model.config.num_attention_heads, loaded.head_dim, dtype=torch.bfloat16, device=loaded.device)
    assert cuda_row_fp8.eligible(probe, loaded.num_kv_heads, FP8)
    tokens = prompt(700, seed=11)
    runs = []
    for use_cuda_kernel in (True, False):
        if not use_cuda_kernel:
            monkeypatch.setattr(cuda_row_fp8, "eligible", lambda *args: False)
        runner = ModelRunner(loaded, deterministic=False, cuda_graphs=graphs, kv_dtype=FP8)
        pool = KVPool(KVShape(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, FP8, loaded.device),
                      1 << 32, 64, 0, 0, 256)
        kv = pool.allocate()
        pool.reserve(kv, len(tokens) + 16)
        runner.feed([StepRow(kv, tuple(tokens), None)])
        logits = [runner.feed([StepRow(kv, (3 + step,), Sampler(SamplingParams()))]).rows.float()
                  for step in range(12)]
        runs.append(torch.cat(logits))
        runner.shutdown()
    with_cuda, with_triton = runs
    assert torch.isfinite(with_cuda).all()
    for a, b in zip(with_cuda, with_triton):
        assert F.cosine_similarity(a, b, dim=0).item() > 0.999
