"""The speculative benchmark's echo bound (ops/bench/echo_bound.py): no model, no server."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "ops" / "bench"))

from echo_bound import echo_bound


def history_of(*runs: tuple[list[int], bool]) -> tuple[list[int], list[bool]]:
    history, generated = [], []
    for tokens, sampled in runs:
        history += tokens
        generated += [sampled] * len(tokens)
    return history, generated


def test_a_reply_that_repeats_the_prompt_is_drafted_whole():
    code = [10, 11, 12, 13, 14, 15, 16, 17]
    history, generated = history_of(([1, 2] + code + [3], False), (code, True))
    # The reply's first token (10) comes from the prefill. The first step's context (3, 10) is new,
    # so it emits 11 alone; from (10, 11) on, the prompt's 12..17 follow in one step.
    assert echo_bound(history, generated, max_draft=8) == (7, 2)
    # Capped drafts take more steps: 11; then 3 drafts and a sampled token; then the last 2.
    assert echo_bound(history, generated, max_draft=3) == (7, 3)


def test_nothing_is_drafted_from_the_future_or_without_an_echo():
    history, generated = history_of(([1, 2, 3], False), ([4, 5, 6, 7], True))
    assert echo_bound(history, generated, max_draft=8) == (3, 3)  # one token a step
    # A run of one token repeated: each step may only copy what is already known.
    history, generated = history_of(([9], False), ([5, 5, 5, 5, 5, 5], True))
    tokens, steps = echo_bound(history, generated, max_draft=8)
    assert tokens == 5 and steps > 1


def test_runs_are_counted_separately_and_earlier_replies_are_history():
    reply = [20, 21, 22, 23, 24]
    history, generated = history_of(([1], False), (reply, True), ([2, 20], False), (reply[1:], True))
    # First reply: no echo (4 steps after its prefill token). Second: 21 is the prefill's, and
    # (20, 21) occurred before, so 22..24 come in one step.
    assert echo_bound(history, generated, max_draft=8) == (4 + 3, 4 + 1)
