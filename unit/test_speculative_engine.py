"""Speculative verification in the engine on tiny real models: emitted tokens equal plain greedy
decoding whatever the drafts, rejected rows are rolled back exactly (bitwise K/V in
deterministic mode), and the draft model proposes what its own greedy decoding would."""

from __future__ import annotations

import random

import pytest
import torch

from kakeya.runtime.engine.draft import DraftRequest, DraftRunner, truncated_draft
from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.forward.session_kv import KVShape
from kakeya.runtime.engine.loader import describe
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.step import StepRow
from tiny_models import ARCHS, CPU, build_reference, decode, feed, greedy, load_tiny, make_pool, prompt, resident

MODES = [pytest.param(True, id="det"), pytest.param(False, id="fast")]


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    return load_tiny(request.param)


def speculative_stream(runner, kv, first: int, reference: list[int], rng: random.Random,
                       other=None) -> list[int]:
    """Decodes len(reference) tokens verifying drafts cut from the reference with random errors.

    `other` (kv, tokens) is fed in the first step, as another session's prefill sharing the forward.
    """
    stream = [first]
    while len(stream) < len(reference):
        left = len(reference) - len(stream)
        truth = reference[len(stream):len(stream) + min(rng.randint(0, 5), left - 1)]
        draft = [t if rng.random() < 0.7 else (t + 1) % 128 for t in truth]
        items = [StepRow(kv, (stream[-1],), greedy(), tuple(draft))]
        if other is not None:
            items.append(StepRow(other[0], tuple(other[1]), None))
            other = None
        before = kv.num_positions
        emitted = runner.run(items)[0]
        assert 1 <= len(emitted) <= len(draft) + 1
        assert kv.num_positions == before + len(emitted)  # the fed token and the accepted drafts
        stream.extend(emitted)
    return stream


@pytest.mark.parametrize("deterministic", MODES)
def test_verified_drafts_give_the_plain_greedy_stream(tiny, deterministic):
    loaded, _ = tiny
    runner = ModelRunner(loaded, deterministic=deterministic)
    pool = make_pool(loaded)
    for seed, length in ((1, 7), (2, 23)):
        tokens = prompt(length, seed)
        plain_kv = pool.allocate()
        pool.reserve(plain_kv, length + 40)
        reference = decode(runner, plain_kv, feed(runner, plain_kv, tokens), 40)

        kv, neighbour = pool.allocate(), pool.allocate()
        pool.reserve(kv, length + 40), pool.reserve(neighbour, 64)
        first = feed(runner, kv, tokens)
        stream = speculative_stream(runner, kv, first, reference, random.Random(seed),
                                    other=(neighbour, prompt(30, 99)))
        assert stream == reference
        assert kv.num_positions == plain_kv.num_positions
        if deterministic:
            # Exact rollback: the slab holds bitwise what plain decoding wrote, no rejected row.
            assert torch.equal(resident(kv), resident(plain_kv))
    runner.shutdown()


def test_bounded_mode_verifies_across_compaction(tiny):
    """Sink 2 + window 8 with 4-token chunks: verification rows still fit after compaction."""
    loaded, _ = tiny
    runner = ModelRunner(loaded, deterministic=True)
    pool = make_pool(loaded, sink=2, window=8, max_chunk=4, block=4)
    tokens = prompt(12, 5)
    plain_kv, kv = pool.allocate(), pool.allocate()
    pool.reserve(plain_kv, 80), pool.reserve(kv, 80)
    reference = decode(runner, plain_kv, feed(runner, plain_kv, tokens, [4, 4, 4]), 50)
    first = feed(runner, kv, tokens, [4, 4, 4])
    rng = random.Random(3)
    stream = [first]
    while len(stream) < len(reference):
        truth = reference[len(stream):len(stream) + min(3, len(reference) - len(stream) - 1)]
        draft = tuple(t if rng.random() < 0.8 else (t + 1) % 128 for t in truth)
        stream.extend(runner.run([StepRow(kv, (stream[-1],), greedy(), draft)])[0])
    assert stream == reference
    assert kv.num_evicted > 0 and kv.capacity == pool.bounded_capacity
    runner.shutdown()


def test_truncated_draft_proposes_its_own_greedy_tokens(tiny):
    loaded, _ = tiny
    draft = truncated_draft(loaded, 1)
    assert draft.num_layers == 1 and loaded.num_layers == 2
    # Weights are shared, not copied.
    assert draft.model.lm_head.weight.data_ptr() == loaded.model.lm_head.weight.data_ptr()
    assert draft.model.model.layers[0] is loaded.model.model.layers[0]
    arch = "llama" if loaded.model.config.model_type == "llama" else "qwen3"
    reference = build_reference(arch)
    reference_draft = truncated_draft(describe(reference, "ref", CPU, torch.float32), 1).model

    shape = KVShape(draft.num_layers, draft.num_kv_heads, draft.head_dim, draft.dtype, draft.device)
    pool = make_pool(loaded)
    pool.draft_shape = shape
    kv = pool.allocate()
    pool.reserve(kv, 64)
    runner = DraftRunner(draft, deterministic=True, executor=ModelRunner(loaded, True).executor)
    tokens = prompt(11, 4)
    [proposal] = runner.propose([DraftRequest(kv.draft, tuple(tokens[:6]), 0, None)])
    assert proposal.tokens == () and kv.draft.num_positions == 6
    [proposal] = runner.propose([DraftRequest(kv.draft, tuple(tokens[6:]), 5, greedy())])
    with torch.no_grad():
        expected = reference_draft.generate(torch.tensor([tokens]), max_new_tokens=5, do_sample=False,
                                            eos_token_id=None, pad_token_id=0)
    assert proposal.tokens == tuple(expected[0, len(tokens):].tolist())
    assert proposal.probs is None
    assert kv.draft.num_positions == len(tokens) + 4  # the last proposed token is not fed


def test_draft_layers_must_leave_a_smaller_model(tiny):
    loaded, _ = tiny
    for layers in (0, 2, 5):
        with pytest.raises(FailedPrecondition):
            truncated_draft(loaded, layers)


def test_draft_slabs_are_part_of_the_lease(tiny):
    loaded, _ = tiny
    draft = truncated_draft(loaded, 1)
    pool = make_pool(loaded, block=16)
    pool.draft_shape = KVShape(draft.num_layers, draft.num_kv_heads, draft.head_dim, draft.dtype, draft.device)
    kv = pool.allocate()
    assert pool.bytes_needed(kv, 20) == 32 * (pool.shape.bytes_per_token + pool.draft_shape.bytes_per_token)
    pool.reserve(kv, 20)
    assert kv.draft.capacity == kv.capacity == 32
    assert pool.used_bytes == kv.lease_bytes == kv.nbytes + kv.draft.nbytes
    pool.free(kv)
    assert pool.used_bytes == 0 and kv.draft.slab is None


def test_a_draft_model_must_share_the_vocabulary(tiny, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
    from kakeya.runtime.common.config import ModelConfig, SpeculativeConfig
    from kakeya.runtime.engine.draft import load_draft

    loaded, _ = tiny
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=128)
    for vocab in (loaded.vocab_size, 2 * loaded.vocab_size):
        LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **common)).save_pretrained(tmp_path / str(vocab))
    config = SpeculativeConfig(mode="draft", draft_model=str(tmp_path / str(loaded.vocab_size)))
    draft = load_draft(config, ModelConfig(device="cpu"), loaded, ATTENTION_NAME)
    assert draft.vocab_size == loaded.vocab_size and draft.num_layers == 1
    wrong = SpeculativeConfig(mode="draft", draft_model=str(tmp_path / str(2 * loaded.vocab_size)))
    with pytest.raises(FailedPrecondition, match="vocabulary"):
        load_draft(wrong, ModelConfig(device="cpu"), loaded, ATTENTION_NAME)
    assert load_draft(SpeculativeConfig(mode="ngram"), ModelConfig(), loaded, ATTENTION_NAME) is None
