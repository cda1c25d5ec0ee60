"""CPU linears on weight-only int8, for quantized (GGUF) models whose fp32 copy is the cost.

A CPU decode step of a small model reads every weight once per step: in fp32 that is four bytes a
weight, and the step waits on memory. Held as int8 (one scale per output channel, symmetric), a
weight is one byte. torch's weight-only int8 matmul (`aten._weight_int8pack_mm`) widens the int8
weights to the activation's dtype inside the kernel; it is fast on bf16 activations (AVX-512 and
AMX-BF16 where the CPU has them) and slow on fp32 ones, so a row is rounded to bf16 at the
kernel's input, and the bf16 result is widened back to fp32. Everything outside the linears
(norms, attention, residuals, the embedding) stays fp32.

Nothing in the kernel mixes rows: each output row is its own dot products over the same weights,
in the same order at every row count (1 to 300 rows checked, and a row among very different
neighbours; unit/test_int8_linear.py), so deterministic mode needs no fixed row grouping.

Not exact: each weight moves by up to half a step of its channel's int8 grid (scale rounded to
bf16 first, so the grid is the one the kernel multiplies by), each activation to bf16 (8 bits of
mantissa), and each output to bf16.
"""

from __future__ import annotations

import torch

try:  # the overload itself: per-call resolution is a measurable share of a small call
    _INT8_MM = torch.ops.aten._weight_int8pack_mm.default
except (AttributeError, RuntimeError):
    _INT8_MM = None


def available() -> bool:
    return _INT8_MM is not None


def int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] fp32 -> int8 [N, K] and bf16 scales [N]: symmetric, one scale per output channel."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(1) / 127).to(torch.bfloat16)
    exact = scales.float()
    safe = torch.where(exact > 0, exact, torch.ones_like(exact))
    quantized = torch.round(weight / safe[:, None]).clamp_(-127, 127).to(torch.int8)
    return quantized.contiguous(), scales


class Int8Linear(torch.nn.Module):
    """Replaces an nn.Linear: its weight as int8 with per-channel bf16 scales, its bias in fp32."""

    def __init__(self, linear: torch.nn.Linear | None = None, *,
                 parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None) -> None:
        super().__init__()
        if linear is not None:
            weight, scales = int8_per_channel(linear.weight)
            bias = linear.bias
        else:
            weight, scales, bias = parts
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight_int8", weight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else bias.detach().float()

    @classmethod
    def fused(cls, modules: list["Int8Linear"]) -> "Int8Linear":
        """One module whose output is the given modules' outputs side by side (rows bitwise the same)."""
        biases = [m.bias for m in modules]
        bias = None if all(b is None for b in biases) else torch.cat(
            [torch.zeros(m.out_features) if b is None else b for m, b in zip(modules, biases)])
        return cls(parts=(torch.cat([m.weight_int8 for m in modules]), torch.cat([m.scales for m in modules]), bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _INT8_MM(x.reshape(-1, self.in_features).bfloat16(), self.weight_int8, self.scales).float()
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*x.shape[:-1], self.out_features)
