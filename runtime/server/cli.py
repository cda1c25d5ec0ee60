"""The `kakeya` command: `kakeya serve` starts the runtime (flags fall back to KAKEYA_* variables);
`kakeya chat` chats with a running one; `kakeya sessions` lists your sessions on it."""

from __future__ import annotations

import argparse
import asyncio
import sys

from kakeya.runtime.common.config import (CPU_WEIGHTS, ENGINE_PROCESS_MODES, KV_DTYPES, SPECULATIVE_MODES, EngineConfig, ModelConfig, RuntimeConfig, ServerConfig, SessionLimits,
                     SpeculativeConfig, cpu_threads, default_model_cache_dir, env_default, model_cache_dir, read_api_keys)
from kakeya.runtime.common.config import HttpConfig

# Top-level modules of the `[runtime]` extra's packages (pyproject.toml): `pip install kakeya`
# (the SDK) has none of them.
RUNTIME_EXTRA_MODULES = frozenset({"torch", "transformers", "accelerate", "gguf", "anyio", "structlog",
                                   "prometheus_client", "grpc_health", "grpc_reflection", "fastapi", "uvicorn",
                                   "jinja2"})


_TRUE = ("1", "true", "yes", "on")


def _env_name(name: str) -> str:
    return f"KAKEYA_{name.upper().replace('-', '_')}"


def _switch(env: str | None) -> bool | None:
    """A KAKEYA_* value read as a switch; None when the variable is not set."""
    return None if env is None else env.lower() in _TRUE


def _flag(parser: argparse.ArgumentParser, name: str, kind=str, default=None, help: str = "", **kw) -> None:
    env = env_default(name)
    value = kind(env) if env is not None and kind is not bool else default
    parser.add_argument(f"--{name}", type=kind, default=value,
                        help=f"{help} [env {_env_name(name)}; default {default}]", **kw)


def _opt_out(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    """--no-NAME: a feature that is on unless the flag or KAKEYA_<NAME> turns it off."""
    parser.add_argument(f"--no-{name}", dest=name.replace("-", "_"), action="store_false",
                        default=_switch(env_default(name)) is not False, help=f"{help} [env {_env_name(name)}=0]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kakeya", description="Kakeya session-bound LLM inference runtime")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the gRPC runtime")
    # In this order in --help.
    for add_flags in (_listen_flags, _model_flags, _memory_flags, _speculative_flags, _request_flags,
                      _operation_flags, _access_flags, _stall_flags, _switch_flags, add_http_flags):
        add_flags(serve)
    # The client side lives in the SDK, which imports neither torch nor the server.
    from kakeya import repl, session_list

    repl.add_arguments(commands.add_parser("chat", help="chat with a running runtime (needs the [chat] extra)"))
    session_list.add_arguments(commands.add_parser("sessions", help="list your sessions on a running runtime"))
    return parser


def _listen_flags(serve: argparse.ArgumentParser) -> None:
    _flag(serve, "host", default="127.0.0.1", help="address to bind")
    _flag(serve, "port", int, 50051, help="TCP port (0: pick a free one)")
    _flag(serve, "unix-socket", help="serve on this unix socket (mode 0600) instead of TCP")


def _model_flags(serve: argparse.ArgumentParser) -> None:
    _flag(serve, "model", help="a .gguf file, a local model directory or a cached hub id; default: embedded SmolLM2-135M-Instruct")
    _flag(serve, "device", default="auto", help="auto, cpu, cuda[:N] or mps")
    _flag(serve, "dtype", default="auto", help="auto, float32, bfloat16 or float16")
    serve.add_argument("--model-cache-dir", default=default_model_cache_dir(),
                       help="keep a GGUF model's converted weights here, so the next start skips the conversion "
                            "('none': do not) [env KAKEYA_MODEL_CACHE_DIR; default $XDG_CACHE_HOME/kakeya/models "
                            "or ~/.cache/kakeya/models]")


def _memory_flags(serve: argparse.ArgumentParser) -> None:
    _flag(serve, "max-sessions", int, 64, help="sessions held at once (LRU-evicts idle ones beyond)")
    _flag(serve, "kv-budget-bytes", int, 4 * 1024**3, help="bytes of KV memory shared by all sessions")
    _flag(serve, "kv-dtype", default="auto", choices=KV_DTYPES,
          help="KV slab dtype: auto (the model's) or fp8 (e4m3: half the bytes, so twice the tokens "
               "resident and faster long decodes, at some accuracy; CUDA, compute capability 8.9+, full attention)")
    _flag(serve, "cpu-weights", default="float32", choices=CPU_WEIGHTS,
          help="CPU linears: float32 (exact), int8 (per-channel int8 weights) or int4 (4-bit groups of 32, "
               "the lm_head int8), both on bf16 activations: faster decoding of small models, not exact; "
               "docs/models.md")
    _flag(serve, "session-ttl-s", float, 3600.0, help="evict sessions idle this long")
    _flag(serve, "sink", int, 0, help="bounded mode: tokens kept at the start of every history")
    _flag(serve, "window", int, 0, help="bounded mode: most recent tokens attended (0: full attention)")
    _flag(serve, "prefill-chunk", int, 256, help="prefill tokens per session per step")


def _speculative_flags(serve: argparse.ArgumentParser) -> None:
    _flag(serve, "speculative", default="none", help="speculative decoding: none, ngram (prompt lookup in the "
          "session's history), suffix (the session's history and recent outputs, drafting only where it pays) "
          "or draft (a draft model)", choices=SPECULATIVE_MODES)
    _flag(serve, "num-draft-tokens", int, help="most draft tokens a session verifies per step (none: 8 for suffix, "
          "4 for ngram and draft)")
    _flag(serve, "draft-model", help="--speculative draft: a model with the verifier's vocabulary (same forms as --model)")
    _flag(serve, "draft-layers", int, 0, help="--speculative draft: use the verifier's first N layers as the draft "
          "(shares its weights)")


def _request_flags(serve: argparse.ArgumentParser) -> None:
    _flag(serve, "max-append-tokens", int, 65536, help="largest single append")
    _flag(serve, "max-generate-tokens", int, 8192, help="largest max_tokens of a Generate")


def _operation_flags(serve: argparse.ArgumentParser) -> None:
    _flag(serve, "log-format", default="console", help="json or console", choices=("json", "console"))
    _flag(serve, "log-level", default="info", help="debug, info, warning or error")
    _flag(serve, "grace-s", float, 5.0, help="seconds in-flight calls get on shutdown")
    _flag(serve, "metrics-host", default="127.0.0.1", help="address of the Prometheus /metrics endpoint")
    _flag(serve, "metrics-port", int, 9400, help="port of the /metrics endpoint (-1: none)")
    _flag(serve, "engine-process", default="auto", choices=ENGINE_PROCESS_MODES,
          help="run the model and its KV memory in a process of their own (auto: on for CUDA, off on CPUs and MPS)")
    _flag(serve, "session-dir", help="keep every session in a file here, so it survives restarts and crashes")


def _access_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--api-key", action="append", default=[], help="accept this API key (repeatable) [env KAKEYA_API_KEYS, comma-separated]")
    serve.add_argument("--api-key-file", action="append", default=[], help="accept the keys in this file, one per line")
    serve.add_argument("--allow-insecure-bind", action="store_true", help="serve a non-loopback address without API keys")
    _flag(serve, "tls-cert", help="PEM certificate: serve TLS (needs --tls-key)")
    _flag(serve, "tls-key", help="PEM private key of --tls-cert")


def _stall_flags(serve: argparse.ArgumentParser) -> None:
    _flag(serve, "consumer-stall-timeout-s", float, 60.0, help="stop a Generate whose client leaves tokens unread this long")
    _flag(serve, "stall-timeout-s", float, 30.0, help="health reports NOT_SERVING when pending work waits this long for a step")


def _switch_flags(serve: argparse.ArgumentParser) -> None:
    det = serve.add_mutually_exclusive_group()
    det.add_argument("--deterministic", dest="deterministic", action="store_true",
                     default=_switch(env_default("deterministic")),
                     help="bitwise-stable streams whatever the append pattern or batch (default on CPU)")
    det.add_argument("--no-deterministic", dest="deterministic", action="store_false")
    for name, what in (("cuda-graphs", "replay decode steps as CUDA graphs"),
                       ("cuda-fusion", "use fused decoder layers (QKV and gate/up GEMMs, norms fused with adds and RoPE)"),
                       ("cuda-run-ahead", "launch the next greedy decode step before the scheduler asks for it")):
        _opt_out(serve, name, f"CUDA only: do not {what}")
    _opt_out(serve, "cpu-packed-linears", "CPU only: plain linears instead of MKL-packed weights, which double the "
                                          "weights' memory")
    _opt_out(serve, "engine-step-ahead", "engine process only: step decode rows only when the front plans them")
    _opt_out(serve, "cpu-decoder", "CPU only: run transformers' modules instead of the same ops called directly "
                                   "(same logits, slower)")


def add_http_flags(serve: argparse.ArgumentParser) -> None:
    """The OpenAI-compatible HTTP API's flags (off unless --http-port is given)."""
    _flag(serve, "http-host", default="127.0.0.1", help="address of the OpenAI-compatible HTTP API")
    _flag(serve, "http-port", int, None, help="serve the OpenAI-compatible HTTP API on this port (0: a free one)")
    _flag(serve, "http-chat-template", help="a Jinja chat template file used instead of the model's own")
    env = env_default("http-reuse-sessions")
    serve.add_argument("--no-http-reuse-sessions", dest="http_reuse_sessions", action="store_false",
                       default=env is None or env.lower() in ("1", "true", "yes", "on"),
                       help="give every HTTP request a new session instead of extending a resident one "
                            "[env KAKEYA_HTTP_REUSE_SESSIONS=0]")


def http_config_from_args(args: argparse.Namespace) -> HttpConfig:
    return HttpConfig(host=args.http_host, port=args.http_port, chat_template=args.http_chat_template,
                      reuse_sessions=args.http_reuse_sessions)


def config_from_args(args: argparse.Namespace) -> RuntimeConfig:
    return RuntimeConfig(
        model=ModelConfig(model=args.model, device=args.device, dtype=args.dtype,
                          cache_dir=model_cache_dir(args.model_cache_dir)),
        engine=EngineConfig(kv_budget_bytes=args.kv_budget_bytes, prefill_chunk_tokens=args.prefill_chunk,
                            max_step_tokens=max(1024, args.prefill_chunk), deterministic=args.deterministic,
                            cuda_graphs=args.cuda_graphs, cuda_fusion=args.cuda_fusion,
                            cuda_run_ahead=args.cuda_run_ahead, cpu_packed_linears=args.cpu_packed_linears,
                            cpu_decoder=args.cpu_decoder, kv_dtype=args.kv_dtype, cpu_weights=args.cpu_weights,
                            sink_tokens=args.sink, window_tokens=args.window,
                            consumer_stall_timeout_s=args.consumer_stall_timeout_s,
                            engine_process=args.engine_process, engine_step_ahead=args.engine_step_ahead),
        limits=SessionLimits(max_sessions=args.max_sessions, session_ttl_s=args.session_ttl_s,
                             max_append_tokens=args.max_append_tokens, max_generate_tokens=args.max_generate_tokens,
                             session_dir=args.session_dir),
        server=ServerConfig(host=args.host, port=args.port, unix_socket=args.unix_socket,
                            log_format=args.log_format, log_level=args.log_level, grace_s=args.grace_s,
                            metrics_host=args.metrics_host,
                            metrics_port=None if args.metrics_port < 0 else args.metrics_port,
                            stall_timeout_s=args.stall_timeout_s,
                            api_keys=read_api_keys(args.api_key, args.api_key_file),
                            allow_insecure_bind=args.allow_insecure_bind,
                            tls_cert=args.tls_cert, tls_key=args.tls_key),
        speculative=SpeculativeConfig(mode=args.speculative, num_draft_tokens=args.num_draft_tokens,
                                      draft_model=args.draft_model, draft_layers=args.draft_layers),
        http=http_config_from_args(args),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "chat":
        from kakeya import repl

        return repl.run(args)
    if args.command == "sessions":
        from kakeya import session_list

        return session_list.run(args)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    try:
        from kakeya.runtime.server.log_setup import configure_logging
        from kakeya.runtime.server.server import serve
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in RUNTIME_EXTRA_MODULES:
            raise  # a module of kakeya itself: a broken install, not a missing extra
        print(f"kakeya serve: the server needs the runtime extra ({exc.name} is not installed): "
              "pip install 'kakeya[runtime]'", file=sys.stderr)
        return 1

    configure_logging(config.server.log_format, config.server.log_level)
    threads = cpu_threads()
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
