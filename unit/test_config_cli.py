"""Configuration validation and the `kakeya serve` command line, with its KAKEYA_* fallbacks.

A bad setting must fail at startup with a clear ValueError (a usage error from the CLI), never
later inside the engine.
"""

from __future__ import annotations

import os

import pytest

from kakeya.runtime.server import cli
from kakeya.runtime.common.config import (EngineConfig, ModelConfig, RuntimeConfig, ServerConfig, SessionLimits,
                                   SpeculativeConfig, cpu_threads, env_default)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No KAKEYA_* variable from the outer environment leaks into a test."""
    for name in list(os.environ):
        if name.startswith("KAKEYA_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("cls, kwargs", [
    (ModelConfig, dict(device="tpu")),
    (ModelConfig, dict(device="cudax")),
    (ModelConfig, dict(dtype="int8")),
    (EngineConfig, dict(kv_budget_bytes=0)),
    (EngineConfig, dict(kv_block_tokens=-1)),
    (EngineConfig, dict(prefill_chunk_tokens=0)),
    (EngineConfig, dict(mailbox_size=0)),
    (EngineConfig, dict(sink_tokens=-1, window_tokens=8)),
    (EngineConfig, dict(window_tokens=-8)),
    (EngineConfig, dict(sink_tokens=4)),  # a sink needs a window
    (EngineConfig, dict(prefill_chunk_tokens=512, max_step_tokens=256)),
    (EngineConfig, dict(kv_dtype="int4")),
    (SessionLimits, dict(max_sessions=0)),
    (SessionLimits, dict(session_ttl_s=0.0)),
    (SessionLimits, dict(max_generate_tokens=-5)),
    (ServerConfig, dict(port=65536)),
    (ServerConfig, dict(port=-1)),
    (ServerConfig, dict(log_format="xml")),
    (SpeculativeConfig, dict(mode="medusa")),
    (SpeculativeConfig, dict(mode="ngram", num_draft_tokens=0)),
    (SpeculativeConfig, dict(mode="ngram", num_draft_tokens=65)),
    (SpeculativeConfig, dict(mode="draft")),  # neither a draft model nor draft layers
    (SpeculativeConfig, dict(mode="draft", draft_model="d", draft_layers=4)),  # both
    (SpeculativeConfig, dict(mode="ngram", draft_layers=4)),  # draft options without draft mode
    (SpeculativeConfig, dict(draft_model="d")),
    (SpeculativeConfig, dict(mode="draft", draft_layers=-1)),
], ids=lambda value: value.__name__ if isinstance(value, type) else repr(value))
def test_invalid_config_raises_value_error(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_valid_configs():
    assert ModelConfig(device="cuda:1", dtype="bfloat16").device == "cuda:1"
    engine = EngineConfig(sink_tokens=0, window_tokens=64, prefill_chunk_tokens=1024, max_step_tokens=1024)
    assert engine.is_bounded and not EngineConfig().is_bounded
    assert ServerConfig(port=0).port == 0 and ServerConfig(port=65535).port == 65535


def test_env_default_reads_the_prefixed_variable(monkeypatch):
    assert env_default("unix-socket", "x", environ={"KAKEYA_UNIX_SOCKET": "/s"}) == "/s"
    assert env_default("port", "1", environ={}) == "1"
    monkeypatch.setenv("KAKEYA_THREADS", "3")
    assert cpu_threads() == 3
    monkeypatch.setenv("KAKEYA_THREADS", "")
    assert cpu_threads() is None


def test_parse_serve_flags():
    args = cli.build_parser().parse_args(["serve", "--port", "0", "--sink", "4", "--window", "64"])
    assert args.command == "serve"
    assert (args.port, args.sink, args.window) == (0, 4, 64)
    assert args.deterministic is None  # decided from the device later
    config = cli.config_from_args(args)
    assert config == RuntimeConfig(
        model=ModelConfig(),
        engine=EngineConfig(kv_budget_bytes=4 * 1024**3, prefill_chunk_tokens=256, max_step_tokens=1024,
                            sink_tokens=4, window_tokens=64),
        limits=SessionLimits(),
        server=ServerConfig(port=0, metrics_port=9400),
    )
    assert config.engine.is_bounded


def test_parse_every_flag():
    args = cli.build_parser().parse_args([
        "serve", "--host", "0.0.0.0", "--unix-socket", "/tmp/k.sock", "--model", "m.gguf", "--device", "cpu",
        "--dtype", "float32", "--max-sessions", "3", "--kv-budget-bytes", "1000000", "--session-ttl-s", "9.5",
        "--prefill-chunk", "2048", "--max-append-tokens", "10", "--max-generate-tokens", "20",
        "--log-format", "json", "--log-level", "debug", "--grace-s", "1", "--no-deterministic"])
    config = cli.config_from_args(args)
    assert config.model == ModelConfig(model="m.gguf", device="cpu", dtype="float32")
    assert config.engine.prefill_chunk_tokens == 2048 and config.engine.max_step_tokens == 2048
    assert config.engine.kv_budget_bytes == 1000000 and config.engine.deterministic is False
    assert config.limits == SessionLimits(max_sessions=3, session_ttl_s=9.5, max_append_tokens=10,
                                          max_generate_tokens=20)
    assert config.server == ServerConfig(host="0.0.0.0", unix_socket="/tmp/k.sock", log_format="json",
                                         log_level="debug", grace_s=1.0, metrics_port=9400)
    assert cli.build_parser().parse_args(["serve", "--deterministic"]).deterministic is True


def test_env_fallback_and_flag_precedence(monkeypatch):
    monkeypatch.setenv("KAKEYA_PORT", "6000")
    monkeypatch.setenv("KAKEYA_WINDOW", "32")
    monkeypatch.setenv("KAKEYA_LOG_FORMAT", "json")
    parser = cli.build_parser()
    args = parser.parse_args(["serve"])
    assert (args.port, args.window, args.log_format) == (6000, 32, "json")
    assert cli.build_parser().parse_args(["serve", "--port", "7"]).port == 7  # the flag wins
    assert cli.config_from_args(args).server.port == 6000


def test_cuda_switches_default_on_and_turn_off_by_flag_or_env(monkeypatch):
    engine = cli.config_from_args(cli.build_parser().parse_args(["serve"])).engine
    assert (engine.cuda_graphs, engine.cuda_fusion, engine.cuda_run_ahead) == (True, True, True)
    args = cli.build_parser().parse_args(["serve", "--no-cuda-run-ahead", "--no-cuda-graphs"])
    engine = cli.config_from_args(args).engine
    assert (engine.cuda_graphs, engine.cuda_fusion, engine.cuda_run_ahead) == (False, True, False)
    monkeypatch.setenv("KAKEYA_CUDA_RUN_AHEAD", "0")
    assert cli.config_from_args(cli.build_parser().parse_args(["serve"])).engine.cuda_run_ahead is False


@pytest.mark.parametrize("name", ["cpu-packed-linears", "cpu-decoder"])
def test_cpu_switches_default_on_and_turn_off_by_flag_or_env(monkeypatch, name):
    field = name.replace("-", "_")
    assert getattr(cli.config_from_args(cli.build_parser().parse_args(["serve"])).engine, field) is True
    args = cli.build_parser().parse_args(["serve", f"--no-{name}"])
    assert getattr(cli.config_from_args(args).engine, field) is False
    monkeypatch.setenv(f"KAKEYA_{field.upper()}", "0")
    assert getattr(cli.config_from_args(cli.build_parser().parse_args(["serve"])).engine, field) is False


def test_kv_dtype_flag_and_env(monkeypatch):
    assert cli.config_from_args(cli.build_parser().parse_args(["serve"])).engine.kv_dtype == "auto"
    args = cli.build_parser().parse_args(["serve", "--kv-dtype", "fp8"])
    assert cli.config_from_args(args).engine.kv_dtype == "fp8"
    monkeypatch.setenv("KAKEYA_KV_DTYPE", "fp8")
    assert cli.config_from_args(cli.build_parser().parse_args(["serve"])).engine.kv_dtype == "fp8"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--kv-dtype", "int4"])


def test_command_is_required_and_bad_values_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["serve", "--port", "eighty"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["serve", "--log-format", "xml"])
    assert info.value.code == 2


def test_main_turns_config_errors_into_usage_errors(capsys):
    """--sink without --window passes argparse but fails validation: exit 2 before anything loads."""
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--sink", "4"])
    assert info.value.code == 2
    assert "--sink needs --window" in capsys.readouterr().err


def test_speculative_flags_and_env(monkeypatch):
    args = cli.build_parser().parse_args(["serve", "--speculative", "draft", "--draft-layers", "8",
                                          "--num-draft-tokens", "6"])
    assert cli.config_from_args(args).speculative == SpeculativeConfig(mode="draft", num_draft_tokens=6,
                                                                       draft_layers=8)
    assert cli.config_from_args(cli.build_parser().parse_args(["serve"])).speculative == SpeculativeConfig()
    monkeypatch.setenv("KAKEYA_SPECULATIVE", "draft")
    monkeypatch.setenv("KAKEYA_DRAFT_MODEL", "/models/small")
    config = cli.config_from_args(cli.build_parser().parse_args(["serve"]))
    assert config.speculative == SpeculativeConfig(mode="draft", draft_model="/models/small")
    assert config.speculative.is_enabled and not SpeculativeConfig().is_enabled


def test_each_speculative_mode_has_its_own_draft_reach_unless_one_is_given():
    parse = lambda *extra: cli.config_from_args(cli.build_parser().parse_args(["serve", *extra])).speculative
    assert parse("--speculative", "suffix").num_draft_tokens == 8
    assert parse("--speculative", "ngram").num_draft_tokens == 4
    assert parse("--speculative", "suffix", "--num-draft-tokens", "3").num_draft_tokens == 3
    with pytest.raises(ValueError, match="num_draft_tokens must be in 1..64"):
        SpeculativeConfig(mode="suffix", num_draft_tokens=0)


def test_verification_rows_must_fit_a_prefill_chunk(capsys):
    """K draft tokens make K + 1 rows of one session in one step; bounded slabs keep one chunk spare."""
    with pytest.raises(ValueError, match="num_draft_tokens"):
        RuntimeConfig(engine=EngineConfig(prefill_chunk_tokens=4), speculative=SpeculativeConfig(
            mode="ngram", num_draft_tokens=4))
    RuntimeConfig(engine=EngineConfig(prefill_chunk_tokens=5), speculative=SpeculativeConfig(
        mode="ngram", num_draft_tokens=4))
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--speculative", "ngram", "--draft-model", "x"])
    assert info.value.code == 2
    assert "need --speculative draft" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--speculative", "eagle"])




def test_the_engine_process_is_on_by_default_on_cuda_only():
    config = cli.config_from_args(cli.build_parser().parse_args(["serve"]))
    assert config.engine.uses_engine_process("cuda")
    assert not config.engine.uses_engine_process("cpu") and not config.engine.uses_engine_process("mps")
    forced = cli.config_from_args(cli.build_parser().parse_args(["serve", "--engine-process", "off"]))
    assert not forced.engine.uses_engine_process("cuda")


def test_the_model_cache_dir_comes_from_the_flag_or_env_and_none_turns_it_off(monkeypatch):
    monkeypatch.setenv("KAKEYA_MODEL_CACHE_DIR", "/srv/kakeya-models")
    assert cli.config_from_args(cli.build_parser().parse_args(["serve"])).model.cache_dir == "/srv/kakeya-models"
    args = cli.build_parser().parse_args(["serve", "--model-cache-dir", "none"])
    assert cli.config_from_args(args).model.cache_dir is None
    monkeypatch.setenv("KAKEYA_MODEL_CACHE_DIR", "none")
    assert cli.config_from_args(cli.build_parser().parse_args(["serve"])).model.cache_dir is None
    args = cli.build_parser().parse_args(["serve", "--model-cache-dir", "/var/cache/k"])
    assert cli.config_from_args(args).model.cache_dir == "/var/cache/k"
