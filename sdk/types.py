"""Plain values the SDK returns: why a generation stopped, snapshots of a session and the runtime, and
the entries of a session listing.

They are built from the wire messages here so that proto types never reach callers; the
session and runtime snapshots copy every field of their reply through its descriptor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from kakeya.proto.v1 import runtime_pb2 as pb


class StopReason(enum.Enum):
    """Why a generation ended. Values equal the wire enum's."""

    MAX_TOKENS = pb.GenerateDone.STOP_REASON_MAX_TOKENS
    EOS = pb.GenerateDone.STOP_REASON_EOS
    # Also set locally when the client stopped reading before the runtime's final event.
    CANCELLED = pb.GenerateDone.STOP_REASON_CANCELLED
    TRUNCATED = pb.GenerateDone.STOP_REASON_TRUNCATED


# The invariant counters' attribute names: shorter than the wire names, and public API already.
ATTRIBUTE_OF_WIRE_NAME = {"cache_invariant_inv1_violations": "inv1_violations",
                          "cache_invariant_inv2_violations": "inv2_violations"}


def reply_values(reply: Message) -> dict[str, Any]:
    """Every field of a reply, keyed by attribute name; repeated fields become tuples so the values
    stay immutable. Driven by the message's descriptor: the proto is the one list of fields, and
    unit/test_sdk_info_fields.py checks the dataclasses below declare exactly those, typed alike."""
    values = {}
    for field in reply.DESCRIPTOR.fields:
        value = getattr(reply, field.name)
        values[ATTRIBUTE_OF_WIRE_NAME.get(field.name, field.name)] = tuple(value) if field.is_repeated else value
    return values


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session's state as the runtime saw it when answering (GetSessionInfoResponse)."""

    history_length: int
    kv_live_bytes: int
    kv_resident_tokens: int
    # Appended but not yet prefilled: prefill is lazy, the next generation does it.
    pending_tokens: int
    inv1_violations: int
    inv2_violations: int
    idle_seconds: float
    client_label: str
    # The ids that stop a generation: the model's own unless the session named others or none.
    eos_token_ids: tuple[int, ...]
    # kv_live_bytes split: bytes of the positions stored, and bytes held for positions to come.
    kv_used_bytes: int
    kv_reserved_bytes: int

    @classmethod
    def from_proto(cls, reply: pb.GetSessionInfoResponse) -> SessionInfo:
        return cls(**reply_values(reply))


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One of the caller's sessions, as ListSessions reports it."""

    session_id: str
    client_label: str
    history_length: int
    kv_live_bytes: int
    idle_seconds: float  # 0 while busy
    busy: bool  # a request is running or queued on it

    @classmethod
    def from_proto(cls, reply: pb.SessionSummary) -> SessionSummary:
        return cls(**reply_values(reply))


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
    # The model's architecture, the forward and attention in use, and what the weights are held as.
    architecture: str = ""
    forward_path: str = ""
    attention_path: str = ""
    weights_held_as: str = ""

    @classmethod
    def from_proto(cls, reply: pb.GetRuntimeInfoResponse) -> RuntimeInfo:
        values = reply_values(reply)
        # A runtime older than speculative decoding leaves the mode unset.
        values["speculative_mode"] = values["speculative_mode"] or "none"
        return cls(**values)
