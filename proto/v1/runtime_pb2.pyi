from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateSessionRequest(_message.Message):
    __slots__ = ("client_label", "eos_token_ids", "no_default_eos")
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    NO_DEFAULT_EOS_FIELD_NUMBER: _ClassVar[int]
    client_label: str
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    no_default_eos: bool
    def __init__(self, client_label: _Optional[str] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., no_default_eos: _Optional[bool] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class AppendTokensRequest(_message.Message):
    __slots__ = ("session_id", "token_ids")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class AppendTokensResponse(_message.Message):
    __slots__ = ("history_length",)
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    history_length: int
    def __init__(self, history_length: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("session_id", "max_tokens", "seed", "temperature", "top_p", "top_k", "max_tokens_per_message", "min_tokens_per_message")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    max_tokens: int
    seed: int
    temperature: float
    top_p: float
    top_k: int
    max_tokens_per_message: int
    min_tokens_per_message: int
    def __init__(self, session_id: _Optional[str] = ..., max_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., max_tokens_per_message: _Optional[int] = ..., min_tokens_per_message: _Optional[int] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("token_ids",)
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("token_id", "done", "truncated", "tokens")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    done: GenerateDone
    truncated: HistoryTruncated
    tokens: TokenIds
    def __init__(self, token_id: _Optional[int] = ..., done: _Optional[_Union[GenerateDone, _Mapping]] = ..., truncated: _Optional[_Union[HistoryTruncated, _Mapping]] = ..., tokens: _Optional[_Union[TokenIds, _Mapping]] = ...) -> None: ...

class GenerateDone(_message.Message):
    __slots__ = ("stop_reason", "generated_token_count", "prefill_duration_seconds", "total_duration_seconds", "prefill_token_count", "draft_token_count", "accepted_draft_token_count")
    class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STOP_REASON_UNSPECIFIED: _ClassVar[GenerateDone.StopReason]
        STOP_REASON_MAX_TOKENS: _ClassVar[GenerateDone.StopReason]
        STOP_REASON_EOS: _ClassVar[GenerateDone.StopReason]
        STOP_REASON_CANCELLED: _ClassVar[GenerateDone.StopReason]
        STOP_REASON_TRUNCATED: _ClassVar[GenerateDone.StopReason]
    STOP_REASON_UNSPECIFIED: GenerateDone.StopReason
    STOP_REASON_MAX_TOKENS: GenerateDone.StopReason
    STOP_REASON_EOS: GenerateDone.StopReason
    STOP_REASON_CANCELLED: GenerateDone.StopReason
    STOP_REASON_TRUNCATED: GenerateDone.StopReason
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    PREFILL_DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_DRAFT_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    stop_reason: GenerateDone.StopReason
    generated_token_count: int
    prefill_duration_seconds: float
    total_duration_seconds: float
    prefill_token_count: int
    draft_token_count: int
    accepted_draft_token_count: int
    def __init__(self, stop_reason: _Optional[_Union[GenerateDone.StopReason, str]] = ..., generated_token_count: _Optional[int] = ..., prefill_duration_seconds: _Optional[float] = ..., total_duration_seconds: _Optional[float] = ..., prefill_token_count: _Optional[int] = ..., draft_token_count: _Optional[int] = ..., accepted_draft_token_count: _Optional[int] = ...) -> None: ...

class HistoryTruncated(_message.Message):
    __slots__ = ("dropped_token_count",)
    DROPPED_TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    dropped_token_count: int
    def __init__(self, dropped_token_count: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("final_history_length",)
    FINAL_HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    final_history_length: int
    def __init__(self, final_history_length: _Optional[int] = ...) -> None: ...

class GetSessionInfoRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionInfoResponse(_message.Message):
    __slots__ = ("history_length", "kv_live_bytes", "cache_invariant_inv1_violations", "cache_invariant_inv2_violations", "idle_seconds", "kv_resident_tokens", "pending_tokens", "client_label", "eos_token_ids", "kv_used_bytes", "kv_reserved_bytes")
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    KV_LIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CACHE_INVARIANT_INV1_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    CACHE_INVARIANT_INV2_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KV_RESIDENT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PENDING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    KV_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    history_length: int
    kv_live_bytes: int
    cache_invariant_inv1_violations: int
    cache_invariant_inv2_violations: int
    idle_seconds: float
    kv_resident_tokens: int
    pending_tokens: int
    client_label: str
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    kv_used_bytes: int
    kv_reserved_bytes: int
    def __init__(self, history_length: _Optional[int] = ..., kv_live_bytes: _Optional[int] = ..., cache_invariant_inv1_violations: _Optional[int] = ..., cache_invariant_inv2_violations: _Optional[int] = ..., idle_seconds: _Optional[float] = ..., kv_resident_tokens: _Optional[int] = ..., pending_tokens: _Optional[int] = ..., client_label: _Optional[str] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., kv_used_bytes: _Optional[int] = ..., kv_reserved_bytes: _Optional[int] = ...) -> None: ...

class GetRuntimeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRuntimeInfoResponse(_message.Message):
    __slots__ = ("model_id", "vocab_size", "default_eos_token_ids", "device", "dtype", "version", "max_context_tokens", "max_sessions", "kv_budget_bytes", "kv_used_bytes", "active_sessions", "max_append_tokens", "max_generate_tokens", "sink_tokens", "window_tokens", "deterministic", "forward_count", "max_sessions_per_forward", "mean_sessions_per_forward", "kv_bytes_per_token", "cache_invariant_inv1_violations", "cache_invariant_inv2_violations", "speculative_mode", "num_draft_tokens", "draft_model_id", "architecture", "forward_path", "attention_path", "weights_held_as")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    KV_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_APPEND_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_GENERATE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SINK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    FORWARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_PER_FORWARD_FIELD_NUMBER: _ClassVar[int]
    MEAN_SESSIONS_PER_FORWARD_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CACHE_INVARIANT_INV1_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    CACHE_INVARIANT_INV2_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_MODE_FIELD_NUMBER: _ClassVar[int]
    NUM_DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PATH_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_PATH_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_HELD_AS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    vocab_size: int
    default_eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    device: str
    dtype: str
    version: str
    max_context_tokens: int
    max_sessions: int
    kv_budget_bytes: int
    kv_used_bytes: int
    active_sessions: int
    max_append_tokens: int
    max_generate_tokens: int
    sink_tokens: int
    window_tokens: int
    deterministic: bool
    forward_count: int
    max_sessions_per_forward: int
    mean_sessions_per_forward: float
    kv_bytes_per_token: int
    cache_invariant_inv1_violations: int
    cache_invariant_inv2_violations: int
    speculative_mode: str
    num_draft_tokens: int
    draft_model_id: str
    architecture: str
    forward_path: str
    attention_path: str
    weights_held_as: str
    def __init__(self, model_id: _Optional[str] = ..., vocab_size: _Optional[int] = ..., default_eos_token_ids: _Optional[_Iterable[int]] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., version: _Optional[str] = ..., max_context_tokens: _Optional[int] = ..., max_sessions: _Optional[int] = ..., kv_budget_bytes: _Optional[int] = ..., kv_used_bytes: _Optional[int] = ..., active_sessions: _Optional[int] = ..., max_append_tokens: _Optional[int] = ..., max_generate_tokens: _Optional[int] = ..., sink_tokens: _Optional[int] = ..., window_tokens: _Optional[int] = ..., deterministic: _Optional[bool] = ..., forward_count: _Optional[int] = ..., max_sessions_per_forward: _Optional[int] = ..., mean_sessions_per_forward: _Optional[float] = ..., kv_bytes_per_token: _Optional[int] = ..., cache_invariant_inv1_violations: _Optional[int] = ..., cache_invariant_inv2_violations: _Optional[int] = ..., speculative_mode: _Optional[str] = ..., num_draft_tokens: _Optional[int] = ..., draft_model_id: _Optional[str] = ..., architecture: _Optional[str] = ..., forward_path: _Optional[str] = ..., attention_path: _Optional[str] = ..., weights_held_as: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionSummary]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionSummary, _Mapping]]] = ...) -> None: ...

class SessionSummary(_message.Message):
    __slots__ = ("session_id", "client_label", "history_length", "kv_live_bytes", "idle_seconds", "busy")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    KV_LIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    client_label: str
    history_length: int
    kv_live_bytes: int
    idle_seconds: float
    busy: bool
    def __init__(self, session_id: _Optional[str] = ..., client_label: _Optional[str] = ..., history_length: _Optional[int] = ..., kv_live_bytes: _Optional[int] = ..., idle_seconds: _Optional[float] = ..., busy: _Optional[bool] = ...) -> None: ...

class ForkSessionRequest(_message.Message):
    __slots__ = ("session_id", "client_label")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    client_label: str
    def __init__(self, session_id: _Optional[str] = ..., client_label: _Optional[str] = ...) -> None: ...

class ForkSessionResponse(_message.Message):
    __slots__ = ("session_id", "history_length")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    history_length: int
    def __init__(self, session_id: _Optional[str] = ..., history_length: _Optional[int] = ...) -> None: ...

class ExportSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class SessionChunk(_message.Message):
    __slots__ = ("header", "kv_data", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KV_DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: SessionHeader
    kv_data: bytes
    trailer: SessionTrailer
    def __init__(self, header: _Optional[_Union[SessionHeader, _Mapping]] = ..., kv_data: _Optional[bytes] = ..., trailer: _Optional[_Union[SessionTrailer, _Mapping]] = ...) -> None: ...

class SessionHeader(_message.Message):
    __slots__ = ("format_version", "model_fingerprint", "model_id", "kv_dtype", "sink_tokens", "window_tokens", "history", "num_fed", "window_start", "kv_rows", "kv_bytes", "eos_token_ids", "client_label", "reported_dropped_tokens")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    KV_DTYPE_FIELD_NUMBER: _ClassVar[int]
    SINK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    NUM_FED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    KV_ROWS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LABEL_FIELD_NUMBER: _ClassVar[int]
    REPORTED_DROPPED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    model_fingerprint: str
    model_id: str
    kv_dtype: str
    sink_tokens: int
    window_tokens: int
    history: _containers.RepeatedScalarFieldContainer[int]
    num_fed: int
    window_start: int
    kv_rows: int
    kv_bytes: int
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    client_label: str
    reported_dropped_tokens: int
    def __init__(self, format_version: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., model_id: _Optional[str] = ..., kv_dtype: _Optional[str] = ..., sink_tokens: _Optional[int] = ..., window_tokens: _Optional[int] = ..., history: _Optional[_Iterable[int]] = ..., num_fed: _Optional[int] = ..., window_start: _Optional[int] = ..., kv_rows: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., client_label: _Optional[str] = ..., reported_dropped_tokens: _Optional[int] = ...) -> None: ...

class SessionTrailer(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: bytes
    def __init__(self, sha256: _Optional[bytes] = ...) -> None: ...

class ImportSessionResponse(_message.Message):
    __slots__ = ("session_id", "history_length")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    history_length: int
    def __init__(self, session_id: _Optional[str] = ..., history_length: _Optional[int] = ...) -> None: ...
