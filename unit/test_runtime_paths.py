"""GetRuntimeInfo names the architecture, the forward and attention in use, and the weights' form."""

from __future__ import annotations

import pytest

from family_models import load_family
from kakeya.runtime.common.config import EngineConfig, RuntimeConfig
from kakeya.runtime.engine.loader import embedded_model_path, gguf_tensor_types
from kakeya.runtime.server.host import Host
from tiny_models import load_tiny

PATH_FIELDS = ("architecture", "forward_path", "attention_path", "weights_held_as")


def _paths(loaded, **engine) -> tuple[str, ...]:
    runtime = Host(RuntimeConfig(engine=EngineConfig(kv_budget_bytes=1 << 24, **engine)), loaded,
                   on_engine_death=lambda exc: None)
    try:
        info = runtime.info()
    finally:
        runtime.runner.shutdown()
    return tuple(info[name] for name in PATH_FIELDS)


def test_a_llama_runs_on_the_cpu_decoder():
    loaded, _ = load_tiny("llama")
    assert _paths(loaded, deterministic=False) == ("llama", "cpu-decoder", "sdpa-slab", "float32, MKL-packed")
    assert _paths(loaded, cpu_packed_linears=False)[1:] == ("generic", "bucketed-sdpa-slab", "float32")


def test_a_hybrid_model_runs_generic_with_its_windowed_layers_named():
    loaded, _ = load_family("gemma2")
    architecture, forward, attention, _ = _paths(loaded, deterministic=True)
    assert (architecture, forward) == ("gemma2", "generic")
    assert attention == ("bucketed-sdpa-slab; 2 of 2 layers windowed-slab: a sliding window of 8 tokens, "
                         "logit soft-capping at 50; logit soft-capping at 50")


def test_an_all_window_model_says_what_its_slabs_keep():
    loaded, _ = load_family("mistral")
    assert _paths(loaded, deterministic=False)[2] == ("sdpa-slab; 2 of 2 layers windowed-slab: a sliding window of 8 "
                                                      "tokens; slabs keep the last 8 positions")


def test_bounded_mode_attends_on_plain_slab_sdpa():
    loaded, _ = load_family("olmo2")
    assert _paths(loaded, deterministic=False, sink_tokens=4, window_tokens=64)[:3] == ("olmo2", "generic", "sdpa-slab")


def test_the_embedded_gguf_names_its_quantization():
    assert gguf_tensor_types(embedded_model_path()).startswith("GGUF Q4_1 (210 tensors)")


@pytest.mark.parametrize(("fmt", "held"), [
    ("int4", "int4 groups of 32 (bf16 scales and zeros; bf16 activations) for 14 linears, int8 per-channel (bf16 "
             "scales; bf16 activations) for 1 linear, float32 elsewhere"),
    ("int8", "int8 per-channel (bf16 scales; bf16 activations) for 15 linears, float32 elsewhere")])
def test_quantized_cpu_weights_say_which_linears_are_held_how(fmt, held):
    loaded, _ = load_tiny("llama")
    assert _paths(loaded, deterministic=True, cpu_weights=fmt)[1:] == ("cpu-decoder", "bucketed-sdpa-slab", held)
