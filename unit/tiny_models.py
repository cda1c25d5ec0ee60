"""Tiny randomly-initialised models of real architectures, and helpers to drive them through the engine.

Nothing is downloaded: the weights come from torch.manual_seed(0), so two builds of one
architecture have identical weights.
"""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

import kakeya.runtime.forward.rows  # noqa: F401  (registers the "kakeya" attention function)
from kakeya.runtime.engine.kv_pool import KVPool
from kakeya.runtime.forward.session_kv import KVShape, SessionKV
from kakeya.runtime.engine.loader import describe
from kakeya.runtime.forward.loaded_model import LoadedModel
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.step import StepRow
from kakeya.runtime.engine.sampler import Sampler, SamplingParams

CPU = torch.device("cpu")
VOCAB = 128
ARCHS = ("llama", "qwen3")


def build_reference(arch: str) -> torch.nn.Module:
    """The plain transformers model (sdpa attention), in eval mode."""
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common))
    else:
        raise ValueError(arch)
    model.set_attn_implementation("sdpa")
    return model.eval()


def load_tiny(arch: str) -> tuple[LoadedModel, torch.nn.Module]:
    """(the engine's LoadedModel on the kakeya attention, an identical sdpa reference model)."""
    reference = build_reference(arch)
    engine_model = copy.deepcopy(reference)
    engine_model.set_attn_implementation("kakeya")
    return describe(engine_model, model_id="tiny", device=CPU, dtype=torch.float32), reference


def make_pool(loaded: LoadedModel, *, sink: int = 0, window: int = 0, max_chunk: int = 64,
              block: int = 16, budget: int = 1 << 30) -> KVPool:
    shape = KVShape(loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, loaded.dtype, loaded.device)
    return KVPool(shape, budget, block, sink, window, max_chunk)


def greedy() -> Sampler:
    return Sampler(SamplingParams())


def prompt(length: int, seed: int) -> list[int]:
    """Token ids in [3, VOCAB): avoids the low ids the tiny configs use as bos/eos/pad."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (length,), generator=g).tolist()


def feed(runner: ModelRunner, kv: SessionKV, tokens: list[int], chunks: list[int] | None = None) -> int:
    """Feeds tokens in chunks (default: one item) and returns the greedy token sampled after the last."""
    chunks = chunks or [len(tokens)]
    assert sum(chunks) == len(tokens)
    start, token = 0, None
    for i, size in enumerate(chunks):
        last = i == len(chunks) - 1
        [emitted] = runner.run([StepRow(kv, tuple(tokens[start:start + size]), greedy() if last else None)])
        token = emitted[0] if emitted else None
        start += size
    return token


def decode(runner: ModelRunner, kv: SessionKV, first: int, count: int) -> list[int]:
    """Greedy stream of `count` tokens starting with `first` (already sampled), one step per token."""
    stream = [first]
    while len(stream) < count:
        [(token,)] = runner.run([StepRow(kv, (stream[-1],), greedy())])
        stream.append(token)
    return stream


def resident(kv: SessionKV) -> torch.Tensor:
    """The slab's resident K/V, [layers, 2, kv_heads, resident, head_dim]."""
    return kv.slab[..., : kv.num_resident, :]
