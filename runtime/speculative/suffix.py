"""Suffix proposals: each session's own history and every session's recent outputs, cut to what pays.

For a decoding session the proposer walks the earlier occurrences of its context's suffix in its
own history (`SuffixIndex`) and in other sessions' finished outputs (`SharedOutputs`), keeps the
walk with the larger expected number of accepted tokens, and lets the `DraftPolicy` cut it to
the tokens whose estimated acceptance beats the measured cost of verifying them: possibly none.
No weights, no device: it runs on the event loop when the step is planned.
"""

from __future__ import annotations

from typing import Sequence

from .adaptive import MIN_PROB, DraftPolicy
from .shared_outputs import SharedOutputs
from .suffix_index import MATCH_STEPS, NO_DRAFT, Draft, SuffixIndex, last_pair, walk

# A session whose lookups keep drafting nothing skips the next 1, 2, 4 ... up to this many steps'
# lookups. Where nothing echoes, fewer lookups also mean fewer weak matches verified: on a 2-core
# CPU, looking up every step after a miss drafted more 2-token matches on free chat and cost 16
# sessions 5-11% (docs/speculative.md), against a session coming back to an echo drafting up to
# this many steps late.
MAX_BACKOFF = 16


class SuffixProposer:
    """Written by the scheduler only (through the speculator); sessions are named by their KV id."""

    def __init__(self, shared: SharedOutputs | None = None, policy: DraftPolicy | None = None,
                 adaptive: bool = True) -> None:
        self.shared = shared if shared is not None else SharedOutputs()
        self.policy = policy if policy is not None else DraftPolicy()
        self.adaptive = adaptive
        self._indexes: dict[int, SuffixIndex] = {}
        self._backoff: dict[int, list[int]] = {}  # session -> [steps still skipped, next backoff]

    def __len__(self) -> int:
        return len(self._indexes)

    def feed(self, session: int, tokens: Sequence[int]) -> None:
        """Tokens the session's slab now holds, in order."""
        index = self._indexes.get(session)
        if index is None:
            index = self._indexes[session] = SuffixIndex()
        index.extend(tokens)

    def history(self, session: int) -> Sequence[int]:
        index = self._indexes.get(session)
        return index.tokens if index is not None else ()

    def best(self, session: int, tail: Sequence[int], limit: int) -> Draft:
        """The longer-expected of the two walks, uncut."""
        if limit <= 0:
            return NO_DRAFT
        index = self._indexes.get(session)
        pair = last_pair(index.tokens if index is not None else (), tail)
        if pair is None:
            return NO_DRAFT
        own = walk(index.candidates(tail, limit), limit, MIN_PROB) if index is not None and index.has(pair) else NO_DRAFT
        if not self.shared.has(pair):
            return own
        recent = [*(index.tokens[-MATCH_STEPS[-1]:] if index is not None else ()), *tail]
        other = walk(self.shared.candidates(recent, limit, session), limit, MIN_PROB)
        return other if other.expected > own.expected else own

    def propose(self, session: int, tail: Sequence[int], limit: int) -> Draft:
        """What the session should verify this step: the best walk, cut by the policy."""
        if not self.adaptive:
            return self.best(session, tail, limit)
        backoff = self._backoff.get(session)
        if backoff is not None and backoff[0] > 0:
            backoff[0] -= 1
            return NO_DRAFT
        draft = self.best(session, tail, limit)
        count = self.policy.length(session, draft.probs) if draft.tokens else 0
        if count:
            self._backoff.pop(session, None)
            return Draft(draft.tokens[:count], draft.probs[:count])
        if backoff is None:
            backoff = self._backoff[session] = [0, 1]
        backoff[0], backoff[1] = backoff[1], min(2 * backoff[1], MAX_BACKOFF)
        return NO_DRAFT

    def verified(self, session: int, probs: Sequence[float], num_accepted: int) -> None:
        self.policy.observe(session, probs, num_accepted)

    def finished(self, session: int, output: Sequence[int]) -> None:
        """A Generate's output, offered to every other session."""
        self.shared.add(session, output)

    def forget(self, session: int) -> None:
        self._indexes.pop(session, None)
        self._backoff.pop(session, None)
        self.policy.forget(session)
