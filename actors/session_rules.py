"""Validation shared by every session: vocabulary, limits, context, and the bounded-mode window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from kakeya.runtime.common.config import SessionLimits
from kakeya.runtime.common.errors import FailedPrecondition, InvalidRequest


@dataclass(frozen=True, slots=True)
class SessionRules:
    limits: SessionLimits
    vocab_size: int
    max_context_tokens: int
    sink_tokens: int = 0
    window_tokens: int = 0  # 0: full attention, histories end at the model's context

    @property
    def max_history_tokens(self) -> int:
        if self.window_tokens:
            return self.limits.max_history_tokens
        return min(self.limits.max_history_tokens, self.max_context_tokens)

    def check_append(self, history_length: int, token_ids: Sequence[int]) -> None:
        if len(token_ids) > self.limits.max_append_tokens:
            raise InvalidRequest(
                f"append of {len(token_ids)} tokens exceeds the limit of {self.limits.max_append_tokens}"
            )
        for position, token in enumerate(token_ids):
            if not 0 <= token < self.vocab_size:
                raise InvalidRequest(
                    f"token id {token} at index {position} is outside the vocabulary [0, {self.vocab_size})"
                )
        if history_length + len(token_ids) > self.max_history_tokens:
            raise InvalidRequest(
                f"history of {history_length} + {len(token_ids)} tokens would exceed the limit of "
                f"{self.max_history_tokens} tokens"
            )

    def check_generate(self, history_length: int, max_tokens: int) -> None:
        if max_tokens <= 0:
            raise InvalidRequest("max_tokens must be > 0")
        if max_tokens > self.limits.max_generate_tokens:
            raise InvalidRequest(f"max_tokens {max_tokens} exceeds the limit of {self.limits.max_generate_tokens}")
        if history_length == 0:
            raise FailedPrecondition("the session's history is empty: append tokens before Generate")
        if history_length + max_tokens > self.max_history_tokens:
            raise InvalidRequest(
                f"history of {history_length} tokens + max_tokens {max_tokens} would exceed the limit of "
                f"{self.max_history_tokens} tokens"
            )

    def dropped_after_prefill(self, history_length: int) -> int:
        """History tokens outside the attention window of the first sampled token (bounded mode)."""
        if not self.window_tokens:
            return 0
        return max(0, history_length - self.window_tokens - self.sink_tokens)
