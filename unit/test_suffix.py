"""The suffix proposer: walks follow the heaviest continuation, longer matches weigh more, the shared
outputs stay bounded and leave by age, appending is incremental, and the adaptive policy drafts
nothing where rows cost more than drafts gain."""

from __future__ import annotations

import gc
import time

from kakeya.runtime.speculative.adaptive import MIN_PROB, DraftPolicy, RowCost
from kakeya.runtime.speculative.shared_outputs import SharedOutputs
from kakeya.runtime.speculative.suffix import SuffixProposer
from kakeya.runtime.speculative.suffix_index import Candidate, SuffixIndex, confidence, walk


def proposer(adaptive: bool = False) -> SuffixProposer:
    return SuffixProposer(adaptive=adaptive)


def test_echo_is_proposed_from_the_sessions_own_history():
    p = proposer()
    code = list(range(10, 40))
    p.feed(1, [5, 6] + code + [7, 8] + code[:6])
    draft = p.propose(1, (code[6],), 8)
    assert draft.tokens == tuple(code[7:15])
    assert all(a >= b for a, b in zip(draft.probs, draft.probs[1:]))  # cumulative: never rises
    assert 0 < draft.probs[-1] <= draft.probs[0] < 1


def test_nothing_without_a_match_and_nothing_for_a_zero_limit():
    p = proposer()
    p.feed(1, [1, 2, 3, 4, 5])
    assert p.propose(1, (9,), 4).tokens == ()
    assert p.propose(1, (1,), 0).tokens == ()
    assert p.propose(2, (1, 2), 4).tokens == ()  # a session never fed


def test_the_more_frequent_continuation_wins_the_branch():
    p = proposer()
    # [1, 2, 3, 4] was followed by 50 twice and by 60 once (the most recent).
    p.feed(1, [1, 2, 3, 4, 50, 51, 9, 1, 2, 3, 4, 50, 51, 9, 1, 2, 3, 4, 60, 61, 9, 1, 2, 3])
    draft = p.propose(1, (4,), 2)
    assert draft.tokens == (50, 51)
    assert draft.probs[0] < 0.9  # a contested branch is less certain than a unanimous one


def test_candidates_that_agree_walk_as_their_longest_match_would():
    same = [10, 11, 12, 13, 14, 15]
    agreeing = walk([Candidate(8, same), Candidate(16, list(same)), Candidate(8, same)], 6, MIN_PROB)
    assert agreeing == walk([Candidate(16, same)], 6, MIN_PROB)
    expected, cumulative = [], 1.0
    for depth in range(6):
        cumulative *= confidence(16 + depth)
        expected.append(cumulative)
    assert agreeing.tokens == tuple(same) and list(agreeing.probs) == expected
    # Once a vote splits them, the winners go on alone: [20, 21] twice against [30, 31] once.
    split = walk([Candidate(8, [20, 21]), Candidate(8, [20, 21]), Candidate(8, [30, 31])], 2, MIN_PROB)
    assert split.tokens == (20, 21)
    assert split.probs[0] == 2 / 3 * confidence(8) and split.probs[1] == split.probs[0] * confidence(9)


def test_a_longer_match_is_more_confident():
    short, long_ = proposer(), proposer()
    short.feed(1, [1, 2, 3, 4, 70, 71, 72, 9, 9, 3])
    long_.feed(1, list(range(100, 120)) + [70, 71, 72, 9] + list(range(100, 119)))
    s = short.propose(1, (4,), 3)
    lo = long_.propose(1, (119,), 3)
    assert s.tokens == lo.tokens == (70, 71, 72)
    assert lo.probs[0] > s.probs[0]


def test_the_continuation_runs_into_the_unfed_tail():
    index = SuffixIndex()
    index.extend([8, 1, 2, 1, 2])
    # Context 8 1 2 1 2 | 1: the last (2, 1) ended at position 4, followed by the fed 2, then the tail's 1.
    assert [list(c.continuation) for c in index.candidates((1,), 3)] == [[2, 1]]
    p = proposer()
    p.feed(1, [8, 1, 2, 1, 2])
    assert p.propose(1, (1,), 3).tokens == (2, 1)


def test_other_sessions_outputs_are_proposed_but_not_ones_own():
    p = proposer()
    schema = [500, 501, 502, 503, 504, 505, 506, 507, 508, 509]
    p.finished(1, [7, 7] + schema)
    p.feed(2, [40, 41, 500, 501, 502])
    assert p.propose(2, (503,), 4).tokens == (504, 505, 506, 507)
    p.feed(1, [40, 41, 500, 501, 502])
    assert p.propose(1, (503,), 4).tokens == ()  # its own output is in its own index, not counted twice


def test_shared_outputs_are_bounded_and_leave_by_age():
    now = [0.0]
    shared = SharedOutputs(max_tokens=100, max_age_s=10.0, clock=lambda: now[0])
    for i in range(30):
        shared.add(i, [i * 1000 + j for j in range(20)])
    assert shared.num_tokens <= 100 and shared.num_docs == 5
    assert shared.num_entries == 5 * (19 + 17)  # keys of 2 and of 4 tokens, nothing stale left
    now[0] = 11.0
    shared.add(99, [1, 2, 3, 4, 5])
    assert shared.num_docs == 1 and shared.num_tokens == 5
    assert shared.num_entries == 4 + 2


def test_appending_is_incremental():
    """Appending one token costs the same on a long history as on a short one (no rebuild)."""
    def per_token(history: int) -> float:
        index = SuffixIndex()
        index.extend([i % 97 for i in range(history)])
        best = float("inf")
        for _ in range(5):  # the best of a few: the machine may be busy
            started = time.perf_counter()
            for i in range(500):
                index.extend((i % 89,))
            best = min(best, time.perf_counter() - started)
        return best

    gc.disable()  # a full collection scans every object: a cost of the heap, not of the index
    try:
        per_token(1000)  # warm
        assert per_token(40_000) < 3 * per_token(1000)
    finally:
        gc.enable()


def test_row_cost_interpolates_and_extrapolates_along_the_measured_line():
    cost = RowCost()
    assert cost.seconds(4) is None
    cost.observe(4, 0.040)
    assert cost.seconds(8) == 0.080  # one size known: every row as costly as the average
    cost.observe(20, 0.050)
    assert abs(cost.seconds(12) - 0.045) < 1e-9
    assert abs(cost.marginal(4, 16) - 0.010 / 16) < 1e-9
    # Past the largest size, along the line through all of them, not proportionally.
    cost.observe(100, 0.130)
    per_row = (cost.seconds(200) - cost.seconds(150)) / 50
    assert 0.0008 < per_row < 0.0011 and cost.seconds(200) < 0.130 * 200 / 100


def test_policy_drafts_nothing_where_rows_are_dear_and_everything_where_free():
    dear = DraftPolicy()
    dear.step_done(rows=16, drafted=0, seconds=0.160, tokens=16)  # each row costs its share
    assert dear.threshold > 0.9
    assert dear.length(1, (0.8, 0.6, 0.4)) == 0
    free = DraftPolicy()
    free.step_done(rows=1, drafted=0, seconds=0.020, tokens=1)
    free.step_done(rows=40, drafted=0, seconds=0.021, tokens=1)
    free.step_done(rows=1, drafted=0, seconds=0.020, tokens=1)
    assert free.threshold == MIN_PROB
    assert free.length(1, (0.8, 0.6, 0.4, 0.04)) == 3


def test_a_session_whose_drafts_fail_stops_drafting_and_later_probes_again():
    policy = DraftPolicy()
    policy.threshold = 0.3
    assert policy.length(1, (0.8, 0.6)) == 2
    for _ in range(10):
        policy.observe(1, (0.8, 0.6), 0)
    assert policy.length(1, (0.8, 0.6)) == 0
    for _ in range(200):
        policy.length(1, (0.8, 0.6))
    assert policy.length(1, (0.8, 0.6)) > 0
    policy.forget(1)
    assert policy.scale(1) == 1.0


def test_a_session_that_drafts_nothing_backs_off_its_lookups():
    p = SuffixProposer()
    p.feed(1, list(range(10, 40)) * 2)
    assert p.best(1, (10,), 4).tokens == (11, 12, 13, 14)
    p.policy.threshold = 2.0  # nothing can pay
    assert all(p.propose(1, (10,), 4).tokens == () for _ in range(40))
    p.policy.threshold = MIN_PROB
    waited = next(i for i in range(40) if p.propose(1, (10,), 4).tokens)
    assert 1 <= waited <= 16  # it was skipping lookups, and comes back within one backoff
    assert p.propose(1, (10,), 4).tokens == (11, 12, 13, 14)  # and looks every step once it pays

