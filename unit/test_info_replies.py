"""GetRuntimeInfo and GetSessionInfo replies: the proto is the one list of their fields.

The runtime hands the servicer plain values keyed by wire name; these tests hold that every proto
field gets one and that no value lacks a field, so a field added to runtime.proto without a value
fails here instead of reaching clients as a silent zero.
"""

from __future__ import annotations

import pytest

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.runtime.common.config import EngineConfig, RuntimeConfig
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.servicer import reply_of, session_values

from tiny_models import load_tiny


def _field_names(message_type) -> set[str]:
    return {field.name for field in message_type.DESCRIPTOR.fields}


def _as_sent(reply, name: str):
    value = getattr(reply, name)
    return value if isinstance(value, (int, float, str, bool)) else tuple(value)


@pytest.fixture(scope="module")
def runtime():
    loaded, _ = load_tiny("llama")
    config = RuntimeConfig(engine=EngineConfig(kv_budget_bytes=64 * 1024**2))
    runtime = Host(config, loaded, on_engine_death=lambda exc: None)
    yield runtime
    runtime.runner.shutdown()


def test_runtime_info_has_a_value_for_every_field_and_no_other(runtime):
    values = runtime.info()
    assert set(values) == _field_names(pb.GetRuntimeInfoResponse)
    reply = reply_of(pb.GetRuntimeInfoResponse, values)
    for name, value in values.items():
        assert _as_sent(reply, name) == (tuple(value) if isinstance(value, (list, tuple)) else value), name
    assert (reply.model_id, reply.vocab_size, reply.speculative_mode) == ("tiny", 128, "none")


async def test_session_info_has_a_value_for_every_field_and_no_other(runtime):
    session_id = await runtime.registry.create("probe", frozenset({7, 3}))
    try:
        values = session_values(runtime.registry.get(session_id))
        assert set(values) == _field_names(pb.GetSessionInfoResponse)
        reply = reply_of(pb.GetSessionInfoResponse, values)
        assert (reply.client_label, list(reply.eos_token_ids), reply.history_length) == ("probe", [3, 7], 0)
        assert reply.cache_invariant_inv1_violations == reply.cache_invariant_inv2_violations == 0
    finally:
        await runtime.registry.close(session_id)


@pytest.mark.parametrize("message_type", [pb.GetRuntimeInfoResponse, pb.GetSessionInfoResponse])
def test_a_missing_or_unknown_key_is_refused(message_type):
    names = sorted(_field_names(message_type))
    full = {name: getattr(message_type(), name) for name in names}
    assert reply_of(message_type, full) == message_type()
    with pytest.raises(TypeError, match=names[0]):
        reply_of(message_type, {name: value for name, value in full.items() if name != names[0]})
    with pytest.raises(TypeError, match="not_a_field"):
        reply_of(message_type, {**full, "not_a_field": 1})
