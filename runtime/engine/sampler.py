"""Token sampling: greedy, or temperature / top-k / top-p with a per-request seeded generator."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import torch

from kakeya.runtime.common.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if math.isnan(self.temperature) or self.temperature < 0 or math.isinf(self.temperature):
            raise InvalidRequest(f"temperature must be a finite number >= 0, got {self.temperature}")
        if math.isnan(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequest(f"top_k must be >= 0, got {self.top_k}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise InvalidRequest("seed must fit in 64 unsigned bits")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Samples one request's tokens. Lives on the model thread; its generator is its own."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._generator: torch.Generator | None = None
        if not params.is_greedy:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            # torch seeds are signed 64-bit; fold the unsigned wire value into range.
            self._generator = torch.Generator().manual_seed(seed % (2**63))

    @property
    def generator(self) -> torch.Generator | None:
        """The request's own random stream (None when greedy); speculative acceptance draws from it too."""
        return self._generator

    def sample(self, logits: torch.Tensor) -> int:
        """logits: [vocab] float32 on the CPU."""
        if self.params.is_greedy:
            return int(torch.argmax(logits))
        return int(torch.multinomial(self.probs(logits), 1, generator=self._generator))

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution `sample` draws from: temperature, then top-k, then top-p. Not for greedy."""
        p = self.params
        # Shift so the best score is 0 before dividing: a tiny temperature then gives -inf
        # for the rest (greedy in the limit) instead of inf - inf = NaN.
        scores = (logits - logits.max()) / p.temperature
        if p.top_k and p.top_k < scores.shape[-1]:
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(ordered, -1).cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = cumulative - torch.softmax(ordered, -1) >= p.top_p
            scores = scores.scatter(0, order[drop], float("-inf"))
        return torch.softmax(scores, -1)
