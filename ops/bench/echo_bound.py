"""How far drafting from a session's own history could go on a finished stream: the echo bound.

A decode step emits one token plus the draft tokens the verifier accepts. A proposer that looks
only at the session's history can at best draft, at each step, the longest continuation of some
earlier occurrence of the context's last CONTEXT tokens that the stream then really took (capped
at the draft limit). Walking a recorded greedy stream that way, with hindsight, gives the tokens
per decode step no such proposer can beat on that stream; speculation's speedup is at most that
figure, reached only where verifying the drafts costs nothing. Other sessions' outputs are not
counted, so the bound is the one-session bound.
"""

from __future__ import annotations

from typing import Sequence

CONTEXT = 2  # tokens of context an earlier occurrence must share (the suffix proposer's shortest key)


def echo_bound(history: Sequence[int], generated: Sequence[bool], max_draft: int) -> tuple[int, int]:
    """(decode-step tokens, decode steps) over every generated run of a session's history.

    history: the session's tokens in order, prompts and replies; generated[i]: whether token i was
    sampled by the model. A run's first token is the prefill's, so it counts in neither figure."""
    seen: dict[tuple[int, ...], list[int]] = {}  # context -> positions of its last token, oldest first
    indexed = 0
    tokens = steps = 0
    i, n = 0, len(history)
    while i < n:
        start = i
        while start < n and not generated[start]:
            start += 1
        stop = start
        while stop < n and generated[stop]:
            stop += 1
        position = start  # the token fed by this decode step; history[:position + 1] is known
        while position + 1 < stop:
            while indexed < position:  # earlier occurrences only: the context itself is not one
                if indexed + 1 >= CONTEXT:
                    seen.setdefault(tuple(history[indexed + 1 - CONTEXT:indexed + 1]), []).append(indexed)
                indexed += 1
            # A step emits its accepted drafts and one sampled token, all within the run.
            accepted = _longest(history, seen.get(tuple(history[position + 1 - CONTEXT:position + 1]), ()),
                                position, min(max_draft, stop - position - 2))
            tokens += 1 + accepted
            steps += 1
            position += 1 + accepted
        i = stop
    return tokens, steps


def _longest(history: Sequence[int], ends: Sequence[int], position: int, limit: int) -> int:
    """The longest known continuation after any of `ends` that the stream took after `position`."""
    best = 0
    for end in ends:
        length = 0
        # The continuation is what followed `end`, up to the last known token (position).
        while (length < limit and end + 1 + length <= position
               and history[end + 1 + length] == history[position + 1 + length]):
            length += 1
        best = max(best, length)
        if best == limit:
            break
    return best
