"""N-gram prompt lookup: proposes draft tokens by finding the session's latest suffix earlier in its history.

No weights, no device: an index from every n-gram (n in min_n..max_n) to the end of its most recent
occurrence, extended as tokens are fed, so a proposal costs max_n dictionary lookups however long
the history is.
"""

from __future__ import annotations

from array import array
from typing import Iterable


class NgramIndex:
    """One session's fed tokens and the n-gram index over them. Written by the scheduler only."""

    def __init__(self, max_n: int = 3, min_n: int = 1) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n}, {max_n}")
        self.max_n = max_n
        self.min_n = min_n
        self.tokens = array("l")
        # n-gram -> index just past its most recent occurrence that has a continuation, i.e.
        # where that continuation starts (always < len(tokens)).
        self._next: dict[tuple[int, ...], int] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        seq, index = self.tokens, self._next
        for token in tokens:
            # The n-grams just before this token now have a continuation: this token.
            start = len(seq)
            seq.append(token)
            for n in range(self.min_n, min(self.max_n, start) + 1):
                index[tuple(seq[start - n:start])] = start

    def propose(self, tail: tuple[int, ...], num_tokens: int) -> tuple[int, ...]:
        """Up to num_tokens tokens that followed the longest earlier match of the sequence's suffix.

        The sequence is the indexed tokens followed by `tail` (tokens sampled but not fed yet).
        Returns () when no suffix of min_n or more tokens occurred before.
        """
        if num_tokens <= 0:
            return ()
        seq = self.tokens
        recent = (*seq[-self.max_n:], *tail)
        for n in range(min(self.max_n, len(recent)), self.min_n - 1, -1):
            start = self._next.get(recent[len(recent) - n:])
            if start is None:
                continue
            # The continuation runs through the indexed tokens, then into the tail.
            proposal = list(seq[start:start + num_tokens])
            if len(proposal) < num_tokens:
                proposal += tail[:num_tokens - len(proposal)]
            return tuple(proposal)
        return ()
