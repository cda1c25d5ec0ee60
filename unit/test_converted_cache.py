"""A GGUF model's converted weights kept on disk: loaded back bit for bit, and a cache that cannot be
read or written never fails a load."""

from __future__ import annotations

import shutil

import pytest
import structlog
import torch

from kakeya.runtime.common.config import ModelConfig, default_model_cache_dir
from kakeya.runtime.engine import converted_cache
from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.engine.loader import embedded_model_path, load_model


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """The embedded model loaded twice through one cache directory: converted, then from the cache."""
    cache_dir = str(tmp_path_factory.mktemp("model-cache"))
    if shutil.disk_usage(cache_dir).free < converted_cache.FREE_RESERVE_BYTES + (1 << 30):
        pytest.skip("this disk has too little free space for an entry")
    config = ModelConfig(cache_dir=cache_dir)
    with structlog.testing.capture_logs() as first_logs:
        converted = load_model(config, ATTENTION_NAME)
    with structlog.testing.capture_logs() as second_logs:
        reloaded = load_model(config, ATTENTION_NAME)
    return cache_dir, converted, reloaded, first_logs, second_logs


def _events(logs) -> set[str]:
    return {entry["event"] for entry in logs}


def test_a_gguf_model_is_converted_once_then_loaded_from_the_cache_with_the_same_bits(cached):
    cache_dir, converted, reloaded, first_logs, second_logs = cached
    assert "model_cache_hit" not in _events(first_logs) and "model_cache_hit" in _events(second_logs)
    ours, theirs = converted.model.state_dict(), reloaded.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert reloaded.weights_origin == converted.weights_origin and reloaded.weights_origin.startswith("GGUF Q4_1")
    assert (reloaded.model_id, reloaded.eos_token_ids, reloaded.architecture) == (
        converted.model_id, converted.eos_token_ids, converted.architecture)
    # Tied embeddings stay tied.
    assert reloaded.model.lm_head.weight.data_ptr() == reloaded.model.model.embed_tokens.weight.data_ptr()
    assert _config(converted) == _config(reloaded)


def _config(loaded) -> dict:
    skip = {"quantization_config", "_name_or_path", "transformers_version"}
    return {k: v for k, v in loaded.model.config.to_dict().items() if k not in skip}


def test_a_damaged_entry_is_a_miss_and_is_removed(cached, tmp_path):
    cache_dir, converted, *_ = cached
    path = embedded_model_path()
    assert converted_cache.store(str(tmp_path), path, torch.float32, converted.model, {"weights_origin": "x"})
    entry = converted_cache.entry_dir(str(tmp_path), path, torch.float32)
    weights = entry / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    with structlog.testing.capture_logs() as logs:
        assert converted_cache.load(str(tmp_path), path, torch.float32, ATTENTION_NAME) is None
    assert "model_cache_unreadable" in _events(logs) and not entry.exists()


def test_two_writers_of_one_entry_both_succeed_and_leave_one_entry(cached, tmp_path):
    _, converted, *_ = cached
    path = embedded_model_path()
    for _ in range(2):
        assert converted_cache.store(str(tmp_path), path, torch.float32, converted.model, {"weights_origin": "x"})
    assert [p.name for p in tmp_path.iterdir()] == [converted_cache.entry_dir(str(tmp_path), path, torch.float32).name]


def test_a_cache_that_cannot_be_written_is_a_warning(cached, tmp_path):
    _, converted, *_ = cached
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with structlog.testing.capture_logs() as logs:
        assert not converted_cache.store(str(blocker / "cache"), embedded_model_path(), torch.float32,
                                         converted.model, {})
    assert "model_cache_not_written" in _events(logs)


def test_the_cache_directory_comes_from_the_environment_or_the_user_cache():
    assert default_model_cache_dir({"KAKEYA_MODEL_CACHE_DIR": "/srv/models"}) == "/srv/models"
    assert default_model_cache_dir({"KAKEYA_MODEL_CACHE_DIR": "none"}) is None
    assert default_model_cache_dir({"XDG_CACHE_HOME": "/x"}) == "/x/kakeya/models"


def test_an_entry_that_would_leave_its_disk_short_is_not_written(cached, tmp_path, monkeypatch):
    """The reserve is set past this disk's real free space: nothing is written, and a warning says why."""
    _, converted, *_ = cached
    monkeypatch.setattr(converted_cache, "FREE_RESERVE_BYTES", 1 << 62)
    with structlog.testing.capture_logs() as logs:
        assert not converted_cache.store(str(tmp_path / "cache"), embedded_model_path(), torch.float32,
                                         converted.model, {})
    assert [e["error"] for e in logs if e["event"] == "model_cache_not_written"][0].endswith("kept free")
    assert not (tmp_path / "cache").exists()


def test_only_the_entries_used_last_are_kept(cached, tmp_path, monkeypatch):
    _, converted, *_ = cached
    monkeypatch.setattr(converted_cache, "KEEP_ENTRIES", 1)
    path = embedded_model_path()
    for dtype in (torch.float32, torch.bfloat16):  # two keys; the weights written are the same
        assert converted_cache.store(str(tmp_path), path, dtype, converted.model, {})
    assert [p.name for p in tmp_path.iterdir()] == [converted_cache.entry_dir(str(tmp_path), path, torch.bfloat16).name]
