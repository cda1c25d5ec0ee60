"""The CPU decoder (runtime/cpu_decoder.py) gives transformers' forward bitwise: logits and K/V.

Two copies of each tiny model run the same steps, one through transformers' modules and one
through the decoder, both on packed linears: prefills (one past the fast mode's packed-row limit),
decode steps, and an append beside decoding sessions, in both modes.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kakeya.runtime.cpu import linear as cpu_linear
from kakeya.runtime.engine.loader import describe
from kakeya.runtime.engine.runner import ModelRunner
from kakeya.runtime.engine.step import StepRow
from family_models import load_family
from tiny_models import ARCHS, CPU, greedy, load_tiny, make_pool, prompt, resident

pytestmark = pytest.mark.skipif(
    not cpu_linear.available(torch.nn.Linear(8, 8)), reason="this torch build has no MKL packed sgemm (non-x86)")


def _llama_with_bias():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
                                         max_position_embeddings=512))
    model.set_attn_implementation("kakeya")
    return describe(model.eval(), model_id="tiny", device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module", params=ARCHS + ("llama-bias", "smollm3"))
def loaded(request):
    if request.param == "smollm3":  # a NoPE layer: the decoder skips its rotary embedding
        return load_family("smollm3")[0]
    return _llama_with_bias() if request.param == "llama-bias" else load_tiny(request.param)[0]


def _twin(loaded):
    return copy.deepcopy(loaded)  # packing replaces modules: each runner packs its own copy


@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "fast"])
def test_decoder_steps_equal_transformers_forward(loaded, deterministic):
    decoder = ModelRunner(_twin(loaded), deterministic, cpu_decoder=True)
    modules = ModelRunner(_twin(loaded), deterministic, cpu_decoder=False)
    decoder.warm_up(0)
    modules.warm_up(0)
    assert decoder.cpu_decoder is not None and modules.cpu_decoder is None
    runs = []
    for runner in (decoder, modules):
        pool = make_pool(runner.loaded, max_chunk=128)
        kvs = [pool.allocate() for _ in range(3)]
        prompts = [prompt(n, seed) for seed, n in enumerate((5, 17, 70))]  # 92 rows: past FAST_MAX_ROWS
        for kv, p in zip(kvs, prompts):
            pool.reserve(kv, len(p) + 40)
        logits = [runner.feed([StepRow(kv, tuple(p), greedy()) for kv, p in zip(kvs, prompts)])]
        streams = [[int(row.argmax())] for row in logits[0]]
        for step in range(8):
            items = [StepRow(kv, (s[-1],), greedy()) for kv, s in zip(kvs, streams)]
            if step == 4:  # an append of 9 tokens beside two decoding sessions
                items[1] = StepRow(kvs[1], (streams[1][-1], *prompt(8, 40)), greedy())
            logits.append(runner.feed(items))
            for s, row in zip(streams, logits[-1]):
                s.append(int(row.argmax()))
        runs.append((logits, [resident(kv) for kv in kvs]))
        runner.shutdown()
    (logits_a, kv_a), (logits_b, kv_b) = runs
    assert all(torch.equal(a, b) for a, b in zip(logits_a, logits_b))
    assert all(torch.equal(a, b) for a, b in zip(kv_a, kv_b))


def test_decoder_needs_packed_linears(loaded):
    runner = ModelRunner(_twin(loaded), True, cpu_packed_linears=False)
    runner.warm_up(0)
    assert runner.cpu_decoder is None
    runner.shutdown()
