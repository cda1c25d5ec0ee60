"""Runtime configuration: frozen, validated dataclasses; the only module that reads the environment."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

ENV_PREFIX = "KAKEYA_"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Which model to load and where. None means: the embedded default / auto."""

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    # Where a GGUF model's converted weights are kept for the next start (runtime/engine/converted_cache.py);
    # None: nowhere.
    cache_dir: str | None = field(default_factory=lambda: default_model_cache_dir())

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda[:N] or mps, not {self.device!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {self.dtype!r}")


KV_DTYPES = ("auto", "fp8")
CPU_WEIGHTS = ("float32", "int8", "int4")
ENGINE_PROCESS_MODES = ("auto", "on", "off")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the scheduler and model thread need: batching, KV memory, bounded mode."""

    kv_budget_bytes: int = 4 * 1024**3
    kv_block_tokens: int = 256
    prefill_chunk_tokens: int = 256
    max_step_tokens: int = 1024
    deterministic: bool | None = None  # None: on for CPU, off elsewhere
    cuda_graphs: bool = True  # CUDA: replay decode steps as captured graphs
    cuda_fusion: bool = True  # CUDA: fused decoder layers (runtime/cuda/decoder.py), compiled pointwise kernels
    cuda_run_ahead: bool = True  # CUDA fast mode: launch the next greedy decode step early (runtime/engine/run_ahead.py)
    cpu_packed_linears: bool = True  # CPU fp32 with MKL: linears on packed weights (runtime/cpu/linear.py)
    cpu_decoder: bool = True  # CPU, packed linears: the forward without transformers' modules (runtime/cpu/decoder.py)
    kv_dtype: str = "auto"  # auto: the model's dtype; fp8: e4m3 slabs (CUDA), half the KV bytes
    cpu_weights: str = "float32"  # int8 / int4: linears held quantized (runtime/cpu/int8_linear.py, int4_linear.py), not exact
    sink_tokens: int = 0
    window_tokens: int = 0
    mailbox_size: int = 1024
    # A Generate whose consumer leaves tokens unread this long is stopped (the session stays usable).
    consumer_stall_timeout_s: float = 60.0
    # The model, KV memory and step loop in a process of their own (runtime/engine/process.py);
    # auto: on for CUDA, off on CPUs and MPS (docs/engine-process.md says why).
    engine_process: str = "auto"
    # In its own process, the engine steps greedy decode rows without waiting for the front's plan.
    engine_step_ahead: bool = True

    def __post_init__(self) -> None:
        _positive(kv_budget_bytes=self.kv_budget_bytes, kv_block_tokens=self.kv_block_tokens,
                  prefill_chunk_tokens=self.prefill_chunk_tokens, max_step_tokens=self.max_step_tokens,
                  mailbox_size=self.mailbox_size, consumer_stall_timeout_s=self.consumer_stall_timeout_s)
        if self.sink_tokens < 0 or self.window_tokens < 0:
            raise ValueError("sink and window must be >= 0")
        if self.sink_tokens and not self.window_tokens:
            raise ValueError("--sink needs --window")
        if self.max_step_tokens < self.prefill_chunk_tokens:
            raise ValueError("max_step_tokens must be >= prefill_chunk_tokens")
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {', '.join(KV_DTYPES)}, not {self.kv_dtype!r}")
        if self.cpu_weights not in CPU_WEIGHTS:
            raise ValueError(f"cpu_weights must be one of {', '.join(CPU_WEIGHTS)}, not {self.cpu_weights!r}")
        if self.engine_process not in ENGINE_PROCESS_MODES:
            raise ValueError(f"engine_process must be one of {', '.join(ENGINE_PROCESS_MODES)}, "
                             f"not {self.engine_process!r}")

    def uses_engine_process(self, device_type: str) -> bool:
        """Whether the engine runs in a process of its own on a device of this type."""
        if self.engine_process == "auto":
            # On a GPU the front's event loop and the forward no longer share a GIL (64 sessions
            # ran twice as fast on an H100); on a CPU they share the same few cores whatever the
            # process layout, and the boundary only adds a round trip per step.
            return device_type == "cuda"
        return self.engine_process == "on"

    @property
    def is_bounded(self) -> bool:
        return self.window_tokens > 0


SPECULATIVE_MODES = ("none", "ngram", "suffix", "draft")
# Without --num-draft-tokens: suffix walks are cut by the cost model (speculative/adaptive.py), so
# a long match may run on; the other proposers draft every step and keep a short reach.
DRAFT_TOKENS_BY_MODE = {"suffix": 8}
DRAFT_TOKENS = 4


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    """Speculative decoding: who proposes draft tokens, and how many per step a session verifies."""

    mode: str = "none"  # none, ngram (prompt lookup), suffix (suffix walks, adaptive), draft (a draft model)
    num_draft_tokens: int | None = None  # None: the mode's default (DRAFT_TOKENS_BY_MODE)
    draft_model: str | None = None  # a model sharing the verifier's vocabulary
    draft_layers: int = 0  # > 0: the draft is the verifier's first N layers (shared weights)

    def __post_init__(self) -> None:
        if self.mode not in SPECULATIVE_MODES:
            raise ValueError(f"speculative mode must be one of {', '.join(SPECULATIVE_MODES)}, not {self.mode!r}")
        if self.num_draft_tokens is None:
            object.__setattr__(self, "num_draft_tokens", DRAFT_TOKENS_BY_MODE.get(self.mode, DRAFT_TOKENS))
        if not 1 <= self.num_draft_tokens <= 64:
            raise ValueError(f"num_draft_tokens must be in 1..64, got {self.num_draft_tokens}")
        if self.draft_layers < 0:
            raise ValueError(f"draft_layers must be >= 0, got {self.draft_layers}")
        has_draft = bool(self.draft_model) or self.draft_layers > 0
        if self.mode == "draft" and bool(self.draft_model) == (self.draft_layers > 0):
            raise ValueError("--speculative draft needs exactly one of --draft-model and --draft-layers")
        if self.mode != "draft" and has_draft:
            raise ValueError("--draft-model and --draft-layers need --speculative draft")

    @property
    def is_enabled(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-session limits, checked before any state changes."""

    max_sessions: int = 64
    session_ttl_s: float = 3600.0
    max_append_tokens: int = 65536
    max_generate_tokens: int = 8192
    max_history_tokens: int = 1 << 20
    mailbox_size: int = 64
    # Durable sessions: each session's state is appended to a file here after every request, and
    # the sessions found here come back at start. None: sessions live and die with the process.
    session_dir: str | None = None

    def __post_init__(self) -> None:
        _positive(max_sessions=self.max_sessions, session_ttl_s=self.session_ttl_s,
                  max_append_tokens=self.max_append_tokens, max_generate_tokens=self.max_generate_tokens,
                  max_history_tokens=self.max_history_tokens, mailbox_size=self.mailbox_size)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where the gRPC server listens and how it logs."""

    host: str = "127.0.0.1"
    port: int = 50051
    unix_socket: str | None = None
    log_format: str = "console"
    log_level: str = "info"
    grace_s: float = 5.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no /metrics endpoint; 0: any free port
    # Health turns NOT_SERVING when work is pending and no step finished for this long.
    stall_timeout_s: float = 30.0
    api_keys: tuple[str, ...] = ()
    # Binding beyond loopback without API keys exposes every session: only on explicit request.
    allow_insecure_bind: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        if self.log_format not in ("json", "console"):
            raise ValueError("log_format must be json or console")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be in 0..65535")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics_port must be in 0..65535")
        if self.stall_timeout_s <= 0:
            raise ValueError("stall_timeout_s must be > 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both a certificate and a key")
        if any(not key or key != key.strip() for key in self.api_keys):
            raise ValueError("API keys must be non-empty and have no surrounding whitespace")
        if not self.unix_socket and not self.api_keys and not self.allow_insecure_bind and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve on {self.host} without API keys: set --api-key or --api-key-file, "
                "or pass --allow-insecure-bind"
            )


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The OpenAI-compatible HTTP API: off unless a port is set; the same API keys as gRPC."""

    host: str = "127.0.0.1"
    port: int | None = None  # None: no HTTP API; 0: any free port
    chat_template: str | None = None  # a Jinja file that replaces the model's own chat template
    # Stateless chat clients resend the whole conversation: reuse a resident session whose
    # history is an exact prefix of the new rendering instead of prefilling it again.
    reuse_sessions: bool = True
    max_body_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ValueError("http port must be in 0..65535")
        _positive(max_body_bytes=self.max_body_bytes)


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: SessionLimits = field(default_factory=SessionLimits)
    server: ServerConfig = field(default_factory=ServerConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    http: HttpConfig = field(default_factory=HttpConfig)

    def __post_init__(self) -> None:
        _check_http_bind(self.http, self.server)
        rows = self.speculative.num_draft_tokens + 1
        # A verifying session feeds K + 1 rows in one step: they must fit a step and, in bounded
        # mode, the slab's spare room of one prefill chunk.
        if self.speculative.is_enabled and rows > self.engine.prefill_chunk_tokens:
            raise ValueError(f"num_draft_tokens + 1 ({rows}) must be <= prefill_chunk_tokens "
                             f"({self.engine.prefill_chunk_tokens})")


def _check_http_bind(http: HttpConfig, server: ServerConfig) -> None:
    if http.port is not None and not server.api_keys and not server.allow_insecure_bind and not is_loopback(http.host):
        raise ValueError(f"refusing to serve HTTP on {http.host} without API keys: set --api-key or --api-key-file, "
                         "or pass --allow-insecure-bind")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_api_keys(inline: Sequence[str], files: Sequence[str]) -> tuple[str, ...]:
    """Keys from flags, key files (one per line, # comments) and KAKEYA_API_KEYS (comma-separated)."""
    keys = [k for k in inline]
    for path in files:
        with open(path, encoding="utf-8") as handle:
            keys += [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    keys += [k.strip() for k in (env_default("api_keys") or "").split(",") if k.strip()]
    return tuple(dict.fromkeys(keys))


def _positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def env_default(name: str, default: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The KAKEYA_<NAME> environment variable, the fallback for a command-line flag."""
    env = os.environ if environ is None else environ
    return env.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def default_model_cache_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """KAKEYA_MODEL_CACHE_DIR ("none" or empty: no cache), else $XDG_CACHE_HOME/kakeya/models, else
    ~/.cache/kakeya/models."""
    env = os.environ if environ is None else environ
    value = env_default("model-cache-dir", environ=env)
    if value is not None:
        return model_cache_dir(value)
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kakeya", "models")


def model_cache_dir(value: str | None) -> str | None:
    """A --model-cache-dir value: "none" (or nothing) means no cache."""
    return None if value is None or value.strip().lower() in ("", "none") else value


def cpu_threads() -> int | None:
    """Torch intra-op threads from KAKEYA_THREADS, if set."""
    value = env_default("threads")
    return int(value) if value else None
