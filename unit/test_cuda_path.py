"""The CUDA path: row kernels against SDPA, graphs against eager, and the deterministic mode's promise.

Runs only where a CUDA device is present (the GPU machine); elsewhere every test is skipped with
the reason. Models are small randomly-initialised Qwen3s built in-process: nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3Config, Qwen3ForCausalLM

import kakeya.runtime.attention  # noqa: F401  (registers the "kakeya" attention function)
from kakeya.runtime.kv_memory import KVPool, KVShape
from kakeya.runtime.model_loader import describe
from kakeya.runtime.model_runner import ModelRunner, WorkItem
from kakeya.runtime.sampler import Sampler, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="the CUDA path needs a CUDA device (run on the GPU machine)")
CUDA = torch.device("cuda")
VOCAB = 512


def build(dtype: torch.dtype, layers: int = 4):
    """(engine model on the kakeya attention, identical sdpa reference), both on the GPU."""
    torch.manual_seed(0)
    config = lambda: Qwen3Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=8192)
    reference = Qwen3ForCausalLM(config()).to(CUDA, dtype).eval()
    reference.set_attn_implementation("sdpa")
    engine = Qwen3ForCausalLM(config()).to(CUDA, dtype).eval()
    engine.load_state_dict(reference.state_dict())
    engine.set_attn_implementation("kakeya")
    return describe(engine, model_id="tiny-cuda", device=CUDA, dtype=dtype), reference


def pool_for(loaded) -> KVPool:
    shape = KVShape(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, loaded.dtype, loaded.device)
    return KVPool(shape, 1 << 32, 64, 0, 0, 256)


def prompt(length: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (length,), generator=g).tolist()


def last_token(emitted) -> int:
    return emitted[-1] if isinstance(emitted, tuple) else emitted


def run_sessions(runner: ModelRunner, pool: KVPool, prompts, count: int, split=None) -> list[list[int]]:
    """Greedy streams of `count` tokens for sessions prefilled and decoded together, step by step.

    split(i) gives the chunk sizes session i's prompt is appended in (default: one piece)."""
    kvs = [pool.allocate() for _ in prompts]
    for kv, p in zip(kvs, prompts):
        pool.reserve(kv, len(p) + count)
    chunks = [list(split(i)) if split else [len(p)] for i, p in enumerate(prompts)]
    offsets = [0] * len(prompts)
    streams: list[list[int]] = [[] for _ in prompts]
    while any(len(s) < count for s in streams):
        items, owners = [], []
        for i, p in enumerate(prompts):
            if chunks[i]:
                size = chunks[i].pop(0)
                last = not chunks[i]
                items.append(WorkItem(kvs[i], tuple(p[offsets[i]:offsets[i] + size]),
                                      Sampler(SamplingParams()) if last else None))
                offsets[i] += size
                owners.append((i, last))
            elif len(streams[i]) < count:
                items.append(WorkItem(kvs[i], (streams[i][-1],), Sampler(SamplingParams())))
                owners.append((i, True))
        for (i, samples), emitted in zip(owners, runner.step(items)):
            if samples:
                streams[i].append(last_token(emitted))
    for kv in kvs:
        pool.free(kv)
    return streams


@pytest.mark.parametrize("splits", [1, 16, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_row_kernel_matches_sdpa(dtype, splits):
    from kakeya.runtime.cuda_kernels import attend_rows, store_rows

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
    attend_rows(query, out, torch.arange(rows, device=CUDA), meta, 1, 0.125, kvh, dtype, splits)
    for r, (slab, n) in enumerate(zip(slabs, counts)):
        assert torch.equal(slab[1, 0, :, n - 1], new_k[r]) and torch.equal(slab[1, 1, :, n - 1], new_v[r])
        keys, values = slab[1, 0, :, :n].float(), slab[1, 1, :, :n].float()
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

