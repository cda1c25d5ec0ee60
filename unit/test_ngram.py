"""The n-gram proposer: the longest recent suffix match wins, its continuation runs into the unfed
tail, nothing is proposed without a match, and the index grows incrementally."""

from __future__ import annotations

import time

import pytest

from kakeya.runtime.speculative.ngram import NgramIndex


def index_of(tokens: list[int], **kwargs) -> NgramIndex:
    index = NgramIndex(**kwargs)
    index.extend(tokens)
    return index


def test_proposes_what_followed_the_earlier_occurrence():
    index = index_of([1, 2, 3, 4, 5, 6, 9, 1, 2])
    assert index.propose((3,), 3) == (4, 5, 6)
    assert index.propose((3,), 1) == (4,)
    assert index.propose((3,), 0) == ()


def test_no_match_proposes_nothing():
    assert index_of([1, 2, 3]).propose((7,), 4) == ()
    assert NgramIndex().propose((7,), 4) == ()


def test_the_longest_suffix_beats_a_more_recent_shorter_one():
    # "8 2" occurred last before the end, but "1 2" (with the 1 before it) is the longer match.
    index = index_of([1, 2, 50, 51, 8, 2, 60, 61, 1])
    assert index.propose((2,), 2) == (50, 51)
    assert index.propose((), 2) == (2, 50)  # the suffix "1" alone
    assert index_of([5, 2, 60, 7, 2]).propose((), 1) == (60,)


def test_the_most_recent_occurrence_of_a_suffix_wins():
    index = index_of([4, 5, 10, 4, 5, 20, 0])
    assert index.propose((4, 5), 1) == (20,)


def test_a_continuation_runs_into_the_tail():
    index = index_of([7, 8, 9, 7])
    # Sequence 7 8 9 7 8: the suffix "7 8" occurred at the start, followed by 9, 7, 8.
    assert index.propose((8,), 5) == (9, 7, 8)


def test_min_n_suppresses_short_matches():
    index = index_of([1, 2, 3, 9, 3], min_n=2)
    assert index.propose((5,), 2) == ()
    assert index.propose((4,), 2) == ()
    assert index_of([1, 2, 3, 9, 1], min_n=2).propose((2,), 2) == (3, 9)
    with pytest.raises(ValueError):
        NgramIndex(max_n=2, min_n=3)


def test_incremental_extension_equals_one_build():
    tokens = [(i * 7919) % 31 for i in range(500)]
    one = index_of(tokens)
    pieces = NgramIndex()
    for start in range(0, 500, 37):
        pieces.extend(tokens[start:start + 37])
    for tail in ((3,), (5, 6), (30,), ()):
        assert pieces.propose(tail, 6) == one.propose(tail, 6)
    assert len(pieces) == 500


def test_a_proposal_costs_the_same_on_a_long_history():
    index = index_of([(i * 7919) % 5003 for i in range(200_000)])
    started = time.perf_counter()
    for token in range(1000):
        index.propose((token,), 4)
    assert time.perf_counter() - started < 0.5  # lookups, not scans of 200k tokens
