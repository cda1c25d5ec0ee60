"""Plain values the SDK returns: why a generation stopped, and snapshots of a session and the runtime.

They are built from the wire messages here so that proto types never reach callers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kakeya.proto.v1 import runtime_pb2 as pb


class StopReason(enum.Enum):
    """Why a generation ended. Values equal the wire enum's."""

    MAX_TOKENS = pb.GenerateDone.STOP_REASON_MAX_TOKENS
    EOS = pb.GenerateDone.STOP_REASON_EOS
    # Also set locally when the client stopped reading before the runtime's final event.
    CANCELLED = pb.GenerateDone.STOP_REASON_CANCELLED
    TRUNCATED = pb.GenerateDone.STOP_REASON_TRUNCATED


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session's state as the runtime saw it when answering."""

    history_length: int
    kv_live_bytes: int
    kv_resident_tokens: int
    # Appended but not yet prefilled: prefill is lazy, the next generation does it.
    pending_tokens: int
    inv1_violations: int
    inv2_violations: int
    idle_seconds: float
    client_label: str
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_proto(cls, reply: pb.GetSessionInfoResponse) -> SessionInfo:
        return cls(
            history_length=reply.history_length,
            kv_live_bytes=reply.kv_live_bytes,
            kv_resident_tokens=reply.kv_resident_tokens,
            pending_tokens=reply.pending_tokens,
            inv1_violations=reply.cache_invariant_inv1_violations,
            inv2_violations=reply.cache_invariant_inv2_violations,
            idle_seconds=reply.idle_seconds,
            client_label=reply.client_label,
            eos_token_ids=tuple(reply.eos_token_ids),
        )


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """The loaded model, the device, the runtime's limits and its batching figures.

    Field names follow GetRuntimeInfoResponse, except the invariant counters, which are named
    as in SessionInfo.
    """

    model_id: str
    vocab_size: int
    default_eos_token_ids: tuple[int, ...]
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
    # Bounded mode; both 0 under full attention.
    sink_tokens: int
    window_tokens: int
    deterministic: bool
    forward_count: int
    max_sessions_per_forward: int
    mean_sessions_per_forward: float
    kv_bytes_per_token: int
    inv1_violations: int
    inv2_violations: int
    # Speculative decoding: "none", "ngram" or "draft", draft tokens per step, the draft model.
    speculative_mode: str = "none"
    num_draft_tokens: int = 0
    draft_model_id: str = ""

    @classmethod
    def from_proto(cls, reply: pb.GetRuntimeInfoResponse) -> RuntimeInfo:
        return cls(
            model_id=reply.model_id,
            vocab_size=reply.vocab_size,
            default_eos_token_ids=tuple(reply.default_eos_token_ids),
            device=reply.device,
            dtype=reply.dtype,
            version=reply.version,
            max_context_tokens=reply.max_context_tokens,
            max_sessions=reply.max_sessions,
            kv_budget_bytes=reply.kv_budget_bytes,
            kv_used_bytes=reply.kv_used_bytes,
            active_sessions=reply.active_sessions,
            max_append_tokens=reply.max_append_tokens,
            max_generate_tokens=reply.max_generate_tokens,
            sink_tokens=reply.sink_tokens,
            window_tokens=reply.window_tokens,
            deterministic=reply.deterministic,
            forward_count=reply.forward_count,
            max_sessions_per_forward=reply.max_sessions_per_forward,
            mean_sessions_per_forward=reply.mean_sessions_per_forward,
            kv_bytes_per_token=reply.kv_bytes_per_token,
            inv1_violations=reply.cache_invariant_inv1_violations,
            inv2_violations=reply.cache_invariant_inv2_violations,
            speculative_mode=reply.speculative_mode or "none",
            num_draft_tokens=reply.num_draft_tokens,
            draft_model_id=reply.draft_model_id,
        )
