"""Blocks of rows over fp8 slabs through the CUDA kernel (cuda_block_fp8): the same attention as the
reference and the Triton block kernel, rows outside blocks left alone, and a session's logits
unchanged by it.

GPU machine only (compute capability 8.9+ and NVRTC through torch); elsewhere skipped with the reason.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
HAS_FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
needs_fp8_gpu = pytest.mark.skipif(not HAS_FP8_GPU, reason="fp8 slabs need a CUDA device of compute capability 8.9+")


def _layout(history: int, sizes: list[int], cuda):
    """One session's blocks of `sizes` rows appended after `history` keys, then a lone row of a
    second session: (slabs, owners, meta with its leaders row, positions of the rows, their leads)."""
    layers, kvh, hd = 2, 2, 128
    appended = sum(sizes)
    slabs = [(torch.randn(layers, 2, kvh, history + appended + 16, hd, device=cuda) * 2).clamp(-448, 448).to(FP8),
             (torch.randn(layers, 2, kvh, 400, hd, device=cuda) * 2).clamp(-448, 448).to(FP8)]
    positions = list(range(history, history + appended)) + [350]
    owners = [0] * appended + [1]
    leads = [lead for size in sizes for lead in (size, *[0] * (size - 1))] + [1]
    leaders = [r for r, lead in enumerate(leads) if lead > 1]
    meta = torch.tensor([[slabs[o].data_ptr() for o in owners], [slabs[o].shape[3] for o in owners], positions,
                         [p + 1 for p in positions], leads, leaders + [-1] * (len(leads) - len(leaders))],
                        dtype=torch.int64, device=cuda)
    return slabs, owners, meta, positions, leads


@needs_fp8_gpu
@pytest.mark.parametrize("group", [1, 2, 4, 8])
@pytest.mark.parametrize("sizes", [[65], [32, 17, 16]], ids=["one-block", "triton-blocks"])
def test_kernel_equals_sdpa_and_skips_lone_rows(group, sizes):
    """A service turn's 65 appended rows as one block (as the planner makes them for this kernel),
    and as the Triton kernel's blocks of 32, 17 and 16, after 0, 300 and 5,000 keys of history (one
    or two splits used of sixteen, a partial last tile, every split): each row equals causal SDPA over the
    slab widened to float32, and the Triton block kernel where it can take the blocks; the lone
    row is not written."""
    from kakeya.runtime.kernels import fp8_block as cuda_block_fp8
    from kakeya.runtime.kernels.triton_blocks import attend_blocks
    from kakeya.runtime.cuda.plan import BLOCK_ROWS

    cuda = torch.device("cuda")
    torch.manual_seed(group)
    kvh, hd = 2, 128
    heads = kvh * group
    for history in (0, 300, 5000):
        slabs, owners, meta, positions, leads = _layout(history, sizes, cuda)
        rows = torch.arange(len(positions), device=cuda)
        query = (torch.randn(len(positions), heads, hd, device=cuda) * 3).to(torch.bfloat16)
        assert cuda_block_fp8.eligible(query, meta, kvh, FP8), "NVRTC or the kernel's compile failed: see the log"
        out = torch.full_like(query, float("nan"))
        cuda_block_fp8.attend_blocks(query, out, rows, meta, 1, hd ** -0.5, kvh, max(sizes))
        by_triton = None
        if max(sizes) <= BLOCK_ROWS:
            by_triton = torch.full_like(query, float("nan"))
            attend_blocks(query, by_triton, rows, meta[:5], 1, hd ** -0.5, kvh, torch.float16, BLOCK_ROWS, FP8)
        torch.cuda.synchronize()
        for r, position in enumerate(positions):
            if leads[r] == 1:
                assert torch.isnan(out[r]).all(), (history, r)
                continue
            slab = slabs[owners[r]]
            keys, values = slab[1, 0, :, :position + 1].float(), slab[1, 1, :, :position + 1].float()
            expected = F.scaled_dot_product_attention(query[r, :, None].float()[None], keys[None], values[None],
                                                      scale=hd ** -0.5, enable_gqa=True)[0, :, 0]
            torch.testing.assert_close(out[r].float(), expected, atol=2e-2, rtol=2e-2, msg=f"{history=} {r=}")
            if by_triton is not None:
                torch.testing.assert_close(out[r].float(), by_triton[r].float(), atol=2e-2, rtol=2e-2,
                                           msg=f"{history=} {r=}")


@needs_fp8_gpu
@pytest.mark.parametrize("graphs", [True, False])
def test_an_appending_session_gives_the_triton_kernels_logits(graphs, monkeypatch):
    """Fast mode over fp8 slabs: a 700-token prompt, then 65 tokens appended (both attend in
    blocks: of 72 rows for the CUDA kernel, of 32 for the Triton one), then decoding. The CUDA
    kernel's logits equal the Triton kernel's up to the order of the sums, in graphs and eagerly."""
    from cuda_models import build, prompt
    from kakeya.runtime.kernels import fp8_block as cuda_block_fp8
    from kakeya.runtime.engine.kv_pool import KVPool
    from kakeya.runtime.forward.session_kv import KVShape
    from kakeya.runtime.engine.runner import ModelRunner, StepRow
    from kakeya.runtime.engine.sampler import Sampler, SamplingParams

    loaded, _ = build(torch.bfloat16, head_dim=128)
    calls = []
    served = cuda_block_fp8.attend_blocks
    monkeypatch.setattr(cuda_block_fp8, "attend_blocks", lambda *args: (calls.append(1), served(*args)))
    first, appended = prompt(700, seed=11), prompt(65, seed=12)
    runs = []
    for use_cuda_kernel in (True, False):
        if not use_cuda_kernel:
            monkeypatch.setattr(cuda_block_fp8, "eligible", lambda *args: False)
            monkeypatch.setattr(cuda_block_fp8, "block_rows", lambda *args: None)
        runner = ModelRunner(loaded, deterministic=False, cuda_graphs=graphs, kv_dtype=FP8)
        assert runner.cuda.block_rows == (cuda_block_fp8.BLOCK_ROWS if use_cuda_kernel else 32)
        pool = KVPool(KVShape(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, FP8, loaded.device),
                      1 << 32, 64, 0, 0, 256)
        kv = pool.allocate()
        pool.reserve(kv, len(first) + len(appended) + 16)
        greedy = Sampler(SamplingParams())
        logits = [runner.feed([StepRow(kv, tuple(first), greedy)]).rows.float(),
                  runner.feed([StepRow(kv, tuple(appended), greedy)]).rows.float()]
        logits += [runner.feed([StepRow(kv, (3 + step,), greedy)]).rows.float() for step in range(6)]
        runs.append(torch.cat(logits))
        runner.shutdown()
        if use_cuda_kernel:
            assert calls, "the blocks did not go through the CUDA kernel"
    with_cuda, with_triton = runs
    assert torch.isfinite(with_cuda).all()
    for a, b in zip(with_cuda, with_triton):
        assert F.cosine_similarity(a, b, dim=0).item() > 0.999
