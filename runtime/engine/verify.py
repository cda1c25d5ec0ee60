"""Speculative verification: which draft tokens the verifier accepts, and the one token it adds.

Pure functions over one session's logits rows [len(draft) + 1, vocab], where row i is the
verifier's prediction after the draft's first i tokens. Every forward path (the packed CPU step,
a device fast path) calls the same `accept`, so acceptance has one definition.
"""

from __future__ import annotations

from typing import Sequence

import torch

from kakeya.runtime.engine.sampler import Sampler
from kakeya.runtime.forward.step_logits import StepLogits, as_step_logits


def accept(logits: torch.Tensor, draft: Sequence[int], sampler: Sampler,
           draft_probs: torch.Tensor | None = None) -> tuple[int, ...]:
    """The accepted prefix of `draft`, then the verifier's token after it (a correction at the
    first rejection, or a bonus token when all are accepted). With an empty draft this is
    exactly `sampler.sample(logits[0])`, random draws included.

    draft_probs: [len(draft), vocab], the distributions the draft tokens were drawn from; None
    means each draft token was proposed with certainty (n-gram lookup, greedy drafting).
    """
    if sampler.params.is_greedy:
        return accept_greedy(logits, draft)
    # The sampler and its generator work on the host; greedy above never copies whole rows.
    rows = logits.rows if isinstance(logits, StepLogits) else logits
    target = torch.stack([sampler.probs(row) for row in rows.float().cpu()])
    return accept_sampled(target, draft, draft_probs, sampler.generator)


def accept_greedy(logits: torch.Tensor, draft: Sequence[int]) -> tuple[int, ...]:
    """Longest prefix of draft that matches the verifier's argmax, then the argmax after it.

    logits may live on any device: only the argmax indices are copied. The result equals plain
    greedy decoding token for token whenever each row's logits equal those of a plain decode step
    (bitwise in deterministic mode).
    """
    # One argmax per step, shared by every session's rows (StepLogits), not a copy per session.
    step = as_step_logits(logits)
    predicted = [step.argmax(i) for i in range(len(draft) + 1)]
    accepted = 0
    while accepted < len(draft) and draft[accepted] == predicted[accepted]:
        accepted += 1
    return (*draft[:accepted], predicted[accepted])


def accept_sampled(target_probs: torch.Tensor, draft: Sequence[int], draft_probs: torch.Tensor | None,
                   generator: torch.Generator | None) -> tuple[int, ...]:
    """Speculative rejection sampling: the output is distributed exactly as sampling token by
    token from target_probs, whatever distributions the draft came from.

    Draft token d at row i is kept with probability min(1, p(d) / q(d)); at the first rejection
    the token comes from the residual max(0, p - q) (normalised), and when every draft token is
    kept a bonus token comes from the row after the last. q is one-hot at d when draft_probs is None.
    """
    for i, token in enumerate(draft):
        p = target_probs[i]
        q_token = 1.0 if draft_probs is None else float(draft_probs[i, token])
        if float(torch.rand((), generator=generator)) * q_token < float(p[token]):
            continue
        if draft_probs is None:
            residual = p.clone()
            residual[token] = 0.0
        else:
            residual = (p - draft_probs[i]).clamp_(min=0.0)
        if not float(residual.sum()) > 0.0:
            # p equals q up to rounding, so a rejection had probability ~0: p itself is exact enough.
            residual = p
        return (*draft[:i], int(torch.multinomial(residual, 1, generator=generator)))
    return (*draft, int(torch.multinomial(target_probs[len(draft)], 1, generator=generator)))
