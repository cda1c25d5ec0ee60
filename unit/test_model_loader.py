"""Model resolution: local directories, cached hub ids, GGUF paths, and clear refusals."""

from __future__ import annotations

import shutil

import pytest
import torch

from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.common.config import ModelConfig
from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.engine.loader import embedded_model_path, load_model
from tiny_models import build_reference


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    model = build_reference("llama")
    model.generation_config.eos_token_id = [2, 5]
    model.save_pretrained(path)
    return path


def test_local_directory_loads_on_the_engine_attention(saved_llama):
    loaded = load_model(ModelConfig(model=str(saved_llama)), ATTENTION_NAME)
    assert loaded.model.config._attn_implementation == ATTENTION_NAME
    assert (loaded.num_layers, loaded.num_kv_heads, loaded.head_dim, loaded.vocab_size) == (2, 2, 16, 128)
    assert loaded.eos_token_ids == (2, 5)
    assert (loaded.device, loaded.dtype) == (torch.device("cpu"), torch.float32)  # auto on a CPU machine


def test_dtype_is_honoured(saved_llama):
    loaded = load_model(ModelConfig(model=str(saved_llama), dtype="bfloat16"), ATTENTION_NAME)
    assert loaded.dtype == torch.bfloat16 and next(loaded.model.parameters()).dtype == torch.bfloat16


def test_hub_id_loads_from_the_local_cache_only(saved_llama, tmp_path, monkeypatch):
    """A hub id resolves through the local cache layout; nothing is fetched."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(saved_llama, snapshot)
    (cache / "models--acme--tiny-llama" / "refs").mkdir()
    (cache / "models--acme--tiny-llama" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    loaded = load_model(ModelConfig(model="acme/tiny-llama"), ATTENTION_NAME)
    assert loaded.model_id == "acme/tiny-llama" and loaded.num_layers == 2
    with pytest.raises(FailedPrecondition, match="cannot load model 'acme/not-cached'"):
        load_model(ModelConfig(model="acme/not-cached"), ATTENTION_NAME)


def test_missing_gguf_file_is_refused(tmp_path):
    with pytest.raises(FailedPrecondition, match="no such GGUF file"):
        load_model(ModelConfig(model=str(tmp_path / "absent.gguf")), ATTENTION_NAME)


def test_a_model_without_attention_layers_is_refused_with_what_is_missing(tmp_path):
    from transformers import MambaConfig, MambaForCausalLM

    MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=4)).save_pretrained(tmp_path)
    with pytest.raises(FailedPrecondition, match="model type 'mamba': layers 0, 1 do not attend through"):
        load_model(ModelConfig(model=str(tmp_path)), ATTENTION_NAME)


def test_embedded_model_is_found_on_disk():
    path = embedded_model_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


def test_cuda_asked_for_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(FailedPrecondition, match="no CUDA device"):
        load_model(ModelConfig(device="cuda"), ATTENTION_NAME)


def test_sliding_window_model_loads_with_its_window(tmp_path):
    """A Mistral config with sliding_window set names no layer_types: its window is what the layer
    hands the attention interface, read at load (unit/test_family_paths.py serves it past the window)."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             sliding_window=24))
    model.save_pretrained(tmp_path)
    loaded = load_model(ModelConfig(model=str(tmp_path)), ATTENTION_NAME)
    assert loaded.architecture == "mistral"
    assert [layer.window for layer in loaded.layers] == [24, 24]


def test_a_gguf_header_is_parsed_once_per_load_and_the_reader_is_restored_after():
    import gguf

    from kakeya.runtime.engine.gguf_reading import shared_reading

    path = embedded_model_path()
    original = gguf.GGUFReader
    with shared_reading():
        first, second = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is second and isinstance(first, original)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
    assert gguf.GGUFReader is original
