"""SessionRules: every request is checked before any state changes.

Full attention caps a history at the model's context; bounded mode (sink + window) only at
the configured history limit, since old tokens leave the window instead of overflowing it.
"""

from __future__ import annotations

import pytest
import torch

from kakeya.actors.session_rules import SessionRules
from kakeya.runtime.common.config import SessionLimits
from kakeya.runtime.common.errors import FailedPrecondition, InvalidRequest
from kakeya.runtime.forward.session_kv import KVShape, SessionKV

LIMITS = SessionLimits(max_append_tokens=8, max_generate_tokens=16, max_history_tokens=100)
FULL = SessionRules(LIMITS, vocab_size=128, max_context_tokens=64)
BOUNDED = SessionRules(LIMITS, vocab_size=128, max_context_tokens=64, sink_tokens=4, window_tokens=16)


def test_max_history_tokens():
    assert FULL.max_history_tokens == 64  # the model's context is the tighter limit
    assert BOUNDED.max_history_tokens == 100  # the configured limit only
    roomy = SessionRules(SessionLimits(max_history_tokens=32), vocab_size=128, max_context_tokens=64)
    assert roomy.max_history_tokens == 32


@pytest.mark.parametrize("rules", [FULL, BOUNDED], ids=["full", "bounded"])
def test_append_accepts_the_vocabulary_edges(rules):
    rules.check_append(0, [0, 127])
    rules.check_append(0, [5] * 8)  # exactly max_append_tokens
    rules.check_append(10, [])


@pytest.mark.parametrize("rules", [FULL, BOUNDED], ids=["full", "bounded"])
@pytest.mark.parametrize("tokens, message", [
    ([1, 128], "outside the vocabulary"),
    ([-1], "outside the vocabulary"),
    ([3, 4, 10**9], "at index 2"),
    ([1] * 9, "exceeds the limit of 8"),
])
def test_append_rejects_bad_tokens(rules, tokens, message):
    with pytest.raises(InvalidRequest, match=message):
        rules.check_append(0, tokens)


def test_append_context_exceeded_in_full_mode_only():
    FULL.check_append(56, [1] * 8)  # 64: exactly the context
    with pytest.raises(InvalidRequest, match="exceed the limit of 64"):
        FULL.check_append(57, [1] * 8)
    BOUNDED.check_append(57, [1] * 8)  # past the model context is fine with a window
    BOUNDED.check_append(92, [1] * 8)
    with pytest.raises(InvalidRequest, match="exceed the limit of 100"):
        BOUNDED.check_append(93, [1] * 8)


@pytest.mark.parametrize("rules", [FULL, BOUNDED], ids=["full", "bounded"])
def test_generate_rejects_bad_max_tokens(rules):
    for bad in (0, -1, 17):
        with pytest.raises(InvalidRequest):
            rules.check_generate(10, bad)
    rules.check_generate(10, 16)
    rules.check_generate(10, 1)


@pytest.mark.parametrize("rules", [FULL, BOUNDED], ids=["full", "bounded"])
def test_generate_on_empty_history_is_a_failed_precondition(rules):
    with pytest.raises(FailedPrecondition) as info:
        rules.check_generate(0, 4)
    assert not isinstance(info.value, InvalidRequest)
    with pytest.raises(InvalidRequest):  # a malformed request is reported first
        rules.check_generate(0, 0)


def test_generate_context_exceeded_in_full_mode_only():
    FULL.check_generate(48, 16)  # 64 exactly
    with pytest.raises(InvalidRequest, match="would exceed the limit of 64"):
        FULL.check_generate(49, 16)
    BOUNDED.check_generate(49, 16)
    BOUNDED.check_generate(84, 16)
    with pytest.raises(InvalidRequest, match="would exceed the limit of 100"):
        BOUNDED.check_generate(85, 16)


@pytest.mark.parametrize("history, dropped", [(0, 0), (1, 0), (20, 0), (21, 1), (36, 16), (100, 80)])
def test_dropped_after_prefill(history, dropped):
    """The first token is sampled at the last history position, which sees the 4 sinks and the
    16 newest positions: anything in between is reported as dropped."""
    assert BOUNDED.dropped_after_prefill(history) == dropped
    assert FULL.dropped_after_prefill(history) == 0


def test_dropped_after_prefill_agrees_with_the_kv_window():
    """What the session reports as dropped is exactly what the slab's window hides from the
    query that samples the first token (position history - 1)."""
    kv = SessionKV(KVShape(1, 1, 1, torch.float32, torch.device("cpu")), sink_tokens=4, window_tokens=16)
    for history in range(1, 120):
        assert BOUNDED.dropped_after_prefill(history) == kv.first_visible(history - 1) - 4, history
