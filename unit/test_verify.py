"""Speculative verification (runtime/verify.py): greedy acceptance is plain greedy, and rejection
sampling reproduces the verifier's distribution (chi-square over many fixed-seed trials, a test
that a deliberately wrong residual fails)."""

from __future__ import annotations

import pytest
import torch

from kakeya.runtime.engine.sampler import Sampler, SamplingParams
from kakeya.runtime.engine.verify import accept, accept_greedy, accept_sampled

# Two target rows (the verifier after 0 and after 1 draft token) and two draft rows.
P = torch.tensor([[0.30, 0.25, 0.20, 0.15, 0.07, 0.03],
                  [0.05, 0.05, 0.10, 0.40, 0.30, 0.10],
                  [0.10, 0.20, 0.30, 0.20, 0.10, 0.10]])
Q = torch.tensor([[0.05, 0.10, 0.15, 0.20, 0.25, 0.25],
                  [0.40, 0.20, 0.10, 0.10, 0.10, 0.10]])
TRIALS = 20000
# Chi-square, 5 degrees of freedom: P(X > 30) < 2e-5 when the hypothesis holds.
CHI2_BOUND = 30.0


def chi_square(samples: list[int], probs: torch.Tensor) -> float:
    counts = torch.bincount(torch.tensor(samples), minlength=probs.numel()).double()
    expected = probs.double() * len(samples)
    return float(((counts - expected) ** 2 / expected).sum())


def run_trials(verify, draft_from_q: bool, seed: int) -> tuple[list[int], list[int]]:
    """(first emitted token of every trial, second emitted token of trials that accepted d1)."""
    generator = torch.Generator().manual_seed(seed)
    firsts, seconds = [], []
    for _ in range(TRIALS):
        if draft_from_q:
            draft = tuple(int(torch.multinomial(row, 1, generator=generator)) for row in Q)
            emitted = verify(P, draft, Q, generator)
        else:
            draft = (2, 3)  # an n-gram proposal: certain, q one-hot
            emitted = verify(P, draft, None, generator)
        firsts.append(emitted[0])
        if len(emitted) >= 2:
            assert emitted[0] == draft[0]
            seconds.append(emitted[1])
    return firsts, seconds


def wrong_residual(target_probs, draft, draft_probs, generator):
    """Rejection sampling that resamples from p instead of max(0, p - q) after a rejection."""
    for i, token in enumerate(draft):
        q = 1.0 if draft_probs is None else float(draft_probs[i, token])
        if float(torch.rand((), generator=generator)) * q < float(target_probs[i, token]):
            continue
        return (*draft[:i], int(torch.multinomial(target_probs[i], 1, generator=generator)))
    return (*draft, int(torch.multinomial(target_probs[len(draft)], 1, generator=generator)))


@pytest.mark.parametrize("draft_from_q", [True, False], ids=["draft-model", "ngram"])
def test_rejection_sampling_preserves_the_target_distribution(draft_from_q):
    firsts, seconds = run_trials(accept_sampled, draft_from_q, seed=11)
    assert chi_square(firsts, P[0]) < CHI2_BOUND
    # Given the first draft token was accepted, the next token follows the second target row.
    assert len(seconds) > 1000
    assert chi_square(seconds, P[1]) < CHI2_BOUND


@pytest.mark.parametrize("draft_from_q", [True, False], ids=["draft-model", "ngram"])
def test_the_statistic_catches_a_wrong_residual(draft_from_q):
    """The same check fails for an implementation that forgets to subtract q."""
    firsts, _ = run_trials(wrong_residual, draft_from_q, seed=11)
    assert chi_square(firsts, P[0]) > 10 * CHI2_BOUND


def test_rejection_sampling_is_reproducible_with_a_seed():
    def run(seed: int) -> list[tuple[int, ...]]:
        generator = torch.Generator().manual_seed(seed)
        return [accept_sampled(P, (2, 3), Q, generator) for _ in range(200)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_a_token_the_target_cannot_emit_is_never_accepted():
    target = torch.tensor([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        assert accept_sampled(target, (2,), None, generator)[0] in (0, 1)


def test_greedy_accepts_the_longest_matching_prefix():
    logits = torch.full((4, 10), -1.0)
    for row, best in enumerate((7, 3, 5, 1)):
        logits[row, best] = 2.0
    assert accept_greedy(logits, (7, 3, 5)) == (7, 3, 5, 1)  # all accepted, plus the bonus token
    assert accept_greedy(logits, (7, 4, 5)) == (7, 3)  # rejected at the second: the correction
    assert accept_greedy(logits, (0, 3, 5)) == (7,)
    assert accept_greedy(logits[:1], ()) == (7,)


def test_empty_draft_is_plain_sampling_draw_for_draw():
    """Without a draft, verification consumes the request's random stream exactly as the sampler does."""
    logits = torch.randn(20, 64, generator=torch.Generator().manual_seed(1))
    for params in (SamplingParams(), SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=3)):
        plain, verified = Sampler(params), Sampler(params)
        assert [plain.sample(row) for row in logits] == [accept(row[None], (), verified)[0] for row in logits]


def test_sampler_probs_is_the_distribution_it_samples():
    sampler = Sampler(SamplingParams(temperature=0.7, top_k=5, top_p=0.8, seed=1))
    logits = torch.randn(64, generator=torch.Generator().manual_seed(2))
    probs = sampler.probs(logits)
    assert torch.isclose(probs.sum(), torch.tensor(1.0)) and int((probs > 0).sum()) <= 5
    draws = {sampler.sample(logits) for _ in range(300)}
    assert draws <= set(torch.nonzero(probs).flatten().tolist())
