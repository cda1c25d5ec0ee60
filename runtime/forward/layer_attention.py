"""What one layer's attention asks of the runtime beyond causal softmax attention over its history.

Read once at load from the arguments transformers' own layer passes to the attention interface
(engine/attention_probe.py), so a family's config spelling (sliding_window, layer_types,
use_sliding_window, ...) never has to be interpreted here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LayerAttention:
    # A query at position p sees keys at positions p - window + 1 .. p; None: its whole history.
    window: int | None = None
    softcap: float | None = None  # attention logits pass through softcap * tanh(logits / softcap)
    sinks: bool = False  # a learned per-head logit joins each softmax's denominator (GPT-OSS)

    @property
    def plain(self) -> bool:
        """Causal attention over the whole history, which every attention path serves."""
        return self.window is None and self.softcap is None and not self.sinks

    def describe(self) -> str:
        parts = []
        if self.window is not None:
            parts.append(f"a sliding window of {self.window} tokens")
        if self.softcap is not None:
            parts.append(f"logit soft-capping at {self.softcap:g}")
        if self.sinks:
            parts.append("attention sinks")
        return ", ".join(parts) or "full attention"
