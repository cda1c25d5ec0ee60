"""The generic path's promises on sliding-window, soft-capped, sink and MoE models: long sessions
past the window, deterministic mode, speculative verification, the whole runtime, and refusals."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from actor_fixtures import Tiny, collect, generate as generate_stream, open_session, started
from cuda_models import run_sessions
from family_models import generate, load_family
from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.engine.loader import describe
from kakeya.runtime.engine.runner import ModelRunner
from test_speculative_engine import speculative_stream
from tiny_models import decode, feed, make_pool, prompt


@pytest.mark.parametrize("model_type", ["mistral", "gemma2"])
def test_long_session_past_the_window_matches_transformers(model_type):
    """Mistral with the issue's window of 24 tokens; Gemma 2 hybrid with soft-capping. 150 tokens
    of history, appended in chunks, then decoded: several windows past the first."""
    loaded, reference = load_family(model_type, sliding_window=24)
    runner = ModelRunner(loaded, deterministic=False)
    pool = make_pool(loaded)
    kv = pool.allocate()
    pool.reserve(kv, 160)
    tokens = prompt(90, 7)
    stream = decode(runner, kv, feed(runner, kv, tokens, [30, 1, 17, 42]), 60)
    assert stream == generate(reference, tokens, 60)
    pool.free(kv)
    runner.shutdown()


@pytest.mark.parametrize("model_type", ["mistral", "gemma2", "gpt_oss", "qwen3_moe"])
def test_deterministic_streams_do_not_depend_on_batching_or_chunking(model_type):
    loaded, reference = load_family(model_type)
    runner = ModelRunner(loaded, deterministic=True)
    prompts = [prompt(21, seed) for seed in range(3)]
    together = run_sessions(runner, make_pool(loaded), prompts, 10, split=lambda i: ([21], [4, 9, 8], [1, 20])[i])
    alone = [run_sessions(runner, make_pool(loaded), [p], 10, split=lambda i: [3, 18]) for p in prompts]
    runner.shutdown()
    assert together == [a[0] for a in alone]
    assert together == [generate(reference, p, 10) for p in prompts]


@pytest.mark.parametrize("model_type", ["mistral", "gemma2", "gpt_oss"])
def test_verified_drafts_give_the_plain_greedy_stream(model_type):
    loaded, reference = load_family(model_type)
    runner = ModelRunner(loaded, deterministic=False)
    pool = make_pool(loaded)
    tokens = prompt(19, 3)
    expected = generate(reference, tokens, 30)
    kv, other = pool.allocate(), pool.allocate()
    pool.reserve(kv, 60)
    pool.reserve(other, 20)
    stream = speculative_stream(runner, kv, feed(runner, kv, tokens), expected, random.Random(5),
                                other=(other, prompt(11, 4)))
    runner.shutdown()
    assert stream == expected


async def test_whole_runtime_with_ngram_speculation_on_a_hybrid_model():
    """Concurrent sessions through registry, sessions, scheduler and engine on Gemma 2."""
    tiny = Tiny(*load_family("gemma2"))
    prompts = [prompt(20, seed) + prompt(6, 9) * 2 for seed in range(3)]  # repeats give n-gram drafts
    async with started(tiny, speculative="ngram") as stack:
        sessions = [await open_session(stack, p) for p in prompts]
        results = await asyncio.gather(*(collect(generate_stream(s, 16)) for s in sessions))
    for p, (tokens, _) in zip(prompts, results):
        assert tokens == generate(tiny.reference, p, 16)


def test_bounded_mode_is_refused_for_a_sliding_window_model():
    loaded, _ = load_family("mistral")
    with pytest.raises(FailedPrecondition, match="layer 0 of 'mistral' attends with a sliding window of 8"):
        ModelRunner(loaded, deterministic=False, bounded=True)


def test_state_space_layers_are_refused_by_name():
    from transformers import MambaConfig, MambaForCausalLM

    model = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=4))
    with pytest.raises(FailedPrecondition, match="layers 0, 1 do not attend through transformers' attention"):
        describe(model, "mamba-tiny", torch.device("cpu"), torch.float32)


def test_layers_of_different_kv_shapes_are_refused():
    """The slab holds one shape for every layer; a model whose layers differ says so at load."""
    loaded, _ = load_family("llama")
    layer = loaded.model.model.layers[1].self_attn
    layer.k_proj = torch.nn.Linear(64, 64, bias=False)  # four KV heads where layer 0 has two
    layer.v_proj = torch.nn.Linear(64, 64, bias=False)
    with pytest.raises(FailedPrecondition, match="layer 1 stores 4 KV heads of 16, layer 0 2 of 16"):
        describe(loaded.model, "mixed", torch.device("cpu"), torch.float32)


async def test_an_all_window_model_keeps_only_its_window():
    """Mistral: every layer windowed, so a session's slab holds the window and one step's rows, not
    its history; tokens leaving the window are not reported dropped (no layer reads them)."""
    tiny = Tiny(*load_family("mistral"))
    tokens = prompt(40, 11)
    async with started(tiny) as stack:
        assert stack.runtime.info()["window_tokens"] == 0 and stack.pool.window_tokens == 8
        session = await open_session(stack, tokens)
        stream = generate_stream(session, 30)
        events = []
        async for event in stream:
            events.append(event)
            if not isinstance(event, int):
                break
        snapshot = session.snapshot
        assert snapshot.history_length == 70 and snapshot.kv_resident_tokens <= 8 + 8
        assert snapshot.kv_live_bytes <= 16 * stack.pool.shape.bytes_per_token
    assert [e for e in events if isinstance(e, int)] == generate(tiny.reference, tokens, 30)
    assert all(isinstance(e, int) for e in events[:-1])  # no truncated event before the tokens


@pytest.mark.parametrize("deterministic", [True, False])
def test_compacted_window_slabs_match_transformers(deterministic):
    """The slab of an all-window model drops what no layer sees (the pool sized as the server sizes
    it); streams still equal transformers' and, deterministic, each other's however appended."""
    loaded, reference = load_family("mistral", sliding_window=12)
    runner = ModelRunner(loaded, deterministic=deterministic)
    prompts = [prompt(50, seed) for seed in range(2)]
    splits = ([25, 25], [7, 30, 13])
    streams = run_sessions(runner, make_pool(loaded, window=12, max_chunk=32), prompts, 40,
                           split=lambda i: splits[i])
    runner.shutdown()
    assert streams == [generate(reference, p, 40) for p in prompts]


def test_deterministic_mode_on_cuda_is_refused_for_windowed_layers():
    """Checked before anything touches a device, so it runs here on a CPU model said to be on CUDA."""
    import dataclasses

    from kakeya.runtime.engine import forward_path

    loaded, _ = load_family("gemma3_text")
    on_cuda = dataclasses.replace(loaded, device=torch.device("cuda"))
    with pytest.raises(FailedPrecondition, match="deterministic mode on CUDA needs the row kernels.*layer 0 of "
                                                 "'gemma3_text' attends with a sliding window of 8 tokens"):
        forward_path.check_layers(on_cuda, bounded=False, deterministic=True)
    assert forward_path.check_layers(on_cuda, bounded=False, deterministic=False) is False
    assert forward_path.check_layers(dataclasses.replace(load_family("olmo2")[0], device=torch.device("cuda")),
                                     bounded=False, deterministic=True) is True
