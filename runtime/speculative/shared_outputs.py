"""Recent outputs of every session, searchable by suffix: what other sessions of the same model wrote.

A finished Generate's tokens become one document. The index maps every key of the document to
(document, position just past the key), in the order documents arrived, so the oldest document's
entries are always at the front of each key's queue and evicting it pops exactly its own entries.
Documents leave by age (`max_age_s`) and, oldest first, whenever the tokens held pass `max_tokens`:
memory stays bounded however long the server runs.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict, deque
from typing import Callable, Sequence

from .suffix_index import KEY_LENS, MATCH_STEPS, MAX_CANDIDATES, Candidate, last_pair, longest, match_len


class SharedOutputs:
    """Written by the scheduler only (through the speculator)."""

    def __init__(self, max_tokens: int = 1 << 18, max_age_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_tokens = max_tokens
        self.max_age_s = max_age_s
        self._clock = clock
        self._next_id = 0
        # doc id -> (owner, tokens, added at), oldest first.
        self._docs: OrderedDict[int, tuple[int, array, float]] = OrderedDict()
        self._at: dict[tuple[int, ...], deque[tuple[int, int]]] = {}
        self.num_tokens = 0

    @property
    def num_docs(self) -> int:
        return len(self._docs)

    @property
    def num_entries(self) -> int:
        return sum(len(entries) for entries in self._at.values())

    def add(self, owner: int, tokens: Sequence[int]) -> None:
        """Indexes one output of session `owner`; evicts what is too old or over budget."""
        self.evict()
        if len(tokens) < min(KEY_LENS) or len(tokens) > self.max_tokens:
            return
        doc_id, self._next_id = self._next_id, self._next_id + 1
        seq = array("l", tokens)
        self._docs[doc_id] = (owner, seq, self._clock())
        self.num_tokens += len(seq)
        for key, end in self._keys(seq):
            entries = self._at.get(key)
            if entries is None:
                entries = self._at[key] = deque()
            entries.append((doc_id, end))
        while self.num_tokens > self.max_tokens:
            self._evict_oldest()

    def evict(self) -> None:
        cutoff = self._clock() - self.max_age_s
        while self._docs and next(iter(self._docs.values()))[2] < cutoff:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        doc_id, (_, seq, _) = self._docs.popitem(last=False)
        self.num_tokens -= len(seq)
        for key, _ in self._keys(seq):
            entries = self._at[key]
            entries.popleft()  # the oldest document's entries are at the front of every queue
            if not entries:
                del self._at[key]

    @staticmethod
    def _keys(seq: array):
        for end in range(1, len(seq) + 1):
            for n in KEY_LENS:
                if end >= n:
                    yield tuple(seq[end - n:end]), end

    def has(self, pair: tuple[int, int]) -> bool:
        return pair in self._at

    def candidates(self, recent: Sequence[int], limit: int, exclude_owner: int) -> list[Candidate]:
        """Occurrences of recent's suffix in other sessions' outputs, newest first, and what followed."""
        pair = last_pair(recent, ())
        if pair is None or pair not in self._at:
            return []
        recent = array("l", recent[-MATCH_STEPS[-1]:])
        for n in KEY_LENS:
            if len(recent) < n:
                continue
            entries = self._at.get(tuple(recent[len(recent) - n:]))
            if not entries:
                continue
            found = []
            # Bounded scan: a session's own outputs are skipped, but never more than a few times over.
            for i in range(len(entries) - 1, max(len(entries) - 1 - 4 * MAX_CANDIDATES, -1), -1):
                doc_id, end = entries[i]
                owner, seq, _ = self._docs[doc_id]
                if owner == exclude_owner or end >= len(seq):
                    continue
                found.append(Candidate(match_len(seq, end, recent, n), seq[end:end + limit]))
                if len(found) >= MAX_CANDIDATES:
                    break
            if found:
                return longest(found)
        return []
