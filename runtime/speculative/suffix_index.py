"""Where a context's suffix occurred before, and what followed it: the suffix walk behind `--speculative suffix`.

Every occurrence of every KEY_LEN-gram is indexed by the position just past it, so appending a
token costs one dictionary append per key length (the index's depth), never a rebuild. A lookup
takes the most recent occurrences of the context's last key, measures how far each one's match
extends further back (by comparing array slices, in C), and walks the continuations together like
the subtree under the matched node of a suffix tree: at each depth the continuation with the most
weight (longer matches weigh more) is drafted, the others drop out, and the draft token's
probability estimate is its share of the weight scaled by how long the match is.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple, Sequence

# Keys of 4 tokens first (specific), then 2 (a fallback that still ignores single-token coincidences).
KEY_LENS = (4, 2)
# How far back a candidate's match is measured; past the last step, a match counts as that long.
MATCH_STEPS = (8, 16, 32)
MAX_CANDIDATES = 8  # most recent occurrences looked at per lookup


class Candidate(NamedTuple):
    match_len: int
    continuation: Sequence[int]


class Draft(NamedTuple):
    """Proposed tokens and, for each, the estimated probability that it and all before it are accepted."""

    tokens: tuple[int, ...]
    probs: tuple[float, ...]

    @property
    def expected(self) -> float:
        """Expected number of accepted tokens if all of them are verified."""
        return sum(self.probs)


NO_DRAFT = Draft((), ())


def match_len(seq: Sequence[int], end: int, recent: Sequence[int], key_len: int) -> int:
    """How many tokens before `end` in seq equal the last tokens of recent (at least key_len, which
    the caller knows match), measured in MATCH_STEPS."""
    found = key_len
    for step in MATCH_STEPS:
        if step > end or step > len(recent) or seq[end - step:end] != recent[len(recent) - step:]:
            break
        found = step
    return found


def confidence(match: int) -> float:
    """Prior that the verifier goes on as a match of this many tokens did: longer echoes hold longer."""
    return match / (match + 2.0)


def walk(candidates: list[Candidate], limit: int, min_prob: float) -> Draft:
    """Drafts along the heaviest continuation, at most limit tokens and while the cumulative
    probability estimate stays at or above min_prob."""
    tokens: list[int] = []
    probs: list[float] = []
    cumulative = 1.0
    alive = candidates
    depth = 0
    while depth < limit and alive and not _agree(alive):
        going = [c for c in alive if depth < len(c.continuation)]
        if not going:
            break
        token = going[0].continuation[depth]
        share = 1.0
        if any(c.continuation[depth] != token for c in going):
            votes: dict[int, float] = {}
            for c in going:
                votes[c.continuation[depth]] = votes.get(c.continuation[depth], 0.0) + c.match_len
            token, weight = max(votes.items(), key=lambda item: item[1])
            share = weight / sum(votes.values())
            going = [c for c in going if c.continuation[depth] == token]
        alive = going
        cumulative *= share * confidence(max(c.match_len for c in alive) + depth)
        if cumulative < min_prob:
            return Draft(tuple(tokens), tuple(probs))
        tokens.append(token)
        probs.append(cumulative)
        depth += 1
    if alive and depth < limit:
        # The continuations left are one and the same (the common case): no vote splits them, each
        # token is as sure as the longest match grown by the depth, until the estimate drops below
        # min_prob. The same figures as the loop above, without its per-token lists.
        continuation, match = alive[0].continuation, max(c.match_len for c in alive)
        for depth in range(depth, min(limit, len(continuation))):
            cumulative *= confidence(match + depth)
            if cumulative < min_prob:
                break
            tokens.append(continuation[depth])
            probs.append(cumulative)
    return Draft(tuple(tokens), tuple(probs))


def _agree(candidates: list[Candidate]) -> bool:
    first = candidates[0].continuation
    return all(c.continuation == first for c in candidates[1:])


def last_pair(fed: Sequence[int], tail: Sequence[int]) -> tuple[int, int] | None:
    """The last two tokens of fed + tail: the shortest key. Where it never occurred, no longer key
    ending in it did either (every occurrence indexes each key length's key), so one dictionary
    probe tells a lookup that finds nothing."""
    if len(tail) >= 2:
        return tail[-2], tail[-1]
    if tail and fed:
        return fed[-1], tail[0]
    if not tail and len(fed) >= 2:
        return fed[-2], fed[-1]
    return None


def longest(found: list[Candidate]) -> list[Candidate]:
    """The occurrences that match furthest back: the deepest node a suffix tree would reach."""
    best = max(c.match_len for c in found)
    return [c for c in found if c.match_len == best]


class SuffixIndex:
    """One session's fed tokens and the occurrences of their keys. Written by the scheduler only."""

    def __init__(self) -> None:
        self.tokens = array("l")
        # (key_len, key) -> positions just past each occurrence of key, oldest first.
        self._at: dict[tuple[int, ...], list[int]] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        seq, at = self.tokens, self._at
        for token in tokens:
            seq.append(token)
            end = len(seq)
            if end < 2:
                continue
            # The keys of KEY_LENS (4 and 2 tokens), built by indexing: a slice and a tuple() per key
            # cost twice as much.
            pair = (seq[-2], token)
            positions = at.get(pair)
            if positions is None:
                at[pair] = [end]
            else:
                positions.append(end)
            if end >= 4:
                quad = (seq[-4], seq[-3], *pair)
                positions = at.get(quad)
                if positions is None:
                    at[quad] = [end]
                else:
                    positions.append(end)

    def has(self, pair: tuple[int, int]) -> bool:
        return pair in self._at

    def candidates(self, tail: Sequence[int], limit: int) -> list[Candidate]:
        """Earlier occurrences of the suffix of (fed tokens + tail) and what followed each, for the
        longest key length that has any; continuations run on into the tail."""
        seq = self.tokens
        pair = last_pair(seq, tail)
        if pair is None or pair not in self._at:
            return []  # no key occurred before (most lookups on text that does not echo)
        recent = seq[-MATCH_STEPS[-1]:] + array("l", tail)
        for n in KEY_LENS:
            if len(recent) < n:
                continue
            positions = self._at.get(tuple(recent[len(recent) - n:]))
            if not positions:
                continue
            found = []
            for end in reversed(positions[-MAX_CANDIDATES - 1:]):  # one more: the newest may be the context
                if end >= len(seq) and not tail:
                    continue  # the context itself, with nothing after it yet
                continuation = seq[end:end + limit]
                if len(continuation) < limit:
                    continuation = continuation + array("l", tail[:limit - len(continuation)])
                found.append(Candidate(match_len(seq, end, recent, n), continuation))
            if found:
                return longest(found)
        return []
