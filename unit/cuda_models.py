"""Tiny randomly-initialised models and step drivers for the CUDA tests (GPU machine only)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

import kakeya.runtime.forward.rows  # noqa: F401  (registers the "kakeya" attention function)
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.forward.session_kv import KVShape
from kakeya.runtime.engine.loader import describe
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.step import StepRow
from kakeya.runtime.engine.sampler import Sampler, SamplingParams

CUDA = torch.device("cuda")
VOCAB = 512


def build(dtype: torch.dtype, layers: int = 4, arch: str = "qwen3", head_dim: int = 64):
    """(engine model on the kakeya attention, identical sdpa reference), both on the GPU.

    "qwen3" has Q/K norms; "llama" has attention biases instead: the two layer forms the fused
    decoder knows. head_dim 128 is the shape cuda_row_fp8's kernel serves."""
    torch.manual_seed(0)
    shape = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                 num_attention_heads=8, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=8192)
    if arch == "qwen3":
        config, model_class = lambda: Qwen3Config(**shape), Qwen3ForCausalLM
    else:
        config, model_class = lambda: LlamaConfig(**shape, attention_bias=True), LlamaForCausalLM
    reference = model_class(config()).to(CUDA, dtype).eval()
    reference.set_attn_implementation("sdpa")
    engine = model_class(config()).to(CUDA, dtype).eval()
    engine.load_state_dict(reference.state_dict())
    engine.set_attn_implementation("kakeya")
    return describe(engine, model_id=f"tiny-cuda-{arch}", device=CUDA, dtype=dtype), reference


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
                items.append(StepRow(kvs[i], tuple(p[offsets[i]:offsets[i] + size]),
                                      Sampler(SamplingParams()) if last else None))
                offsets[i] += size
                owners.append((i, last))
            elif len(streams[i]) < count:
                items.append(StepRow(kvs[i], (streams[i][-1],), Sampler(SamplingParams())))
                owners.append((i, True))
        for (i, samples), emitted in zip(owners, runner.run(items)):
            if samples:
                streams[i].append(last_token(emitted))
    for kv in kvs:
        pool.free(kv)
    return streams
