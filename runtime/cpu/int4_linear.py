"""CPU linears on 4-bit weights in groups of 32, the shape of GGUF's Q4 formats.

A GGUF Q4_1 block is 32 weights w = d*q + m with q in 0..15 spanning the block's min and max.
Re-deriving a 4-bit group of 32 from the dequantized fp32 weights (zero at the group's min, step
(max - min) / 15) finds that grid again, so such a model is held as it was stored, up to its scale
and zero being rounded to bf16; half a byte a weight against fp32's four, which is what a CPU
decode step of a small model waits on. Other weights get the nearest point of their group's grid.

torch's int4 matmul for the CPU (`aten._weight_int4pack_mm_for_cpu`) computes
w = (q - 8) * scale + zero per group, so zero is stored as min + 8 * scale. It is fast on bf16
activations only: a row is rounded to bf16 at the kernel's input and the bf16 result widened back
to fp32; norms, attention, residuals and the embedding stay fp32. Linears of other shapes (input
width not a multiple of 32, outputs not of 16), and the lm_head (whose logits pick the token), are
held as int8 per channel (int8_linear.py) instead.

The kernel computes each output row from that row alone, in the same order at any row count (1 to
300 rows checked, and among very different neighbours; unit/test_int4_linear.py), so deterministic
mode needs no fixed row grouping.
"""

from __future__ import annotations

import torch

GROUP = 32
try:  # the overloads themselves: per-call resolution is a measurable share of a small call
    _INT4_MM = torch.ops.aten._weight_int4pack_mm_for_cpu.default
    _INT4_PACK = torch.ops.aten._convert_weight_to_int4pack_for_cpu.default
except (AttributeError, RuntimeError):
    _INT4_MM = _INT4_PACK = None


def available() -> bool:
    return _INT4_MM is not None


def int4_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] fp32 -> q [N, K] int32 in 0..15 and bf16 scales_and_zeros [K/32, N, 2], such that
    w ~ (q - 8) * scale + zero per group of 32 along K. q is chosen against the bf16-rounded scale
    and zero, the grid the kernel multiplies by."""
    out_features, in_features = weight.shape
    groups = weight.detach().float().reshape(out_features, in_features // GROUP, GROUP)
    low, high = groups.amin(2), groups.amax(2)
    scale = ((high - low) / 15).to(torch.bfloat16)
    zero = (low + 8 * scale.float()).to(torch.bfloat16)
    step = scale.float()
    base = zero.float() - 8 * step  # the grid's q = 0
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.round((groups - base[..., None]) / safe[..., None]).clamp_(0, 15)
    q = torch.where(step[..., None] > 0, q, torch.full_like(q, 8.0))  # a constant group is its zero
    scales_and_zeros = torch.stack((scale.t(), zero.t()), dim=-1).contiguous()
    return q.to(torch.int32).reshape(out_features, in_features), scales_and_zeros


class Int4Linear(torch.nn.Module):
    """Replaces an nn.Linear whose shape the kernel takes (holds()): its weight as packed 4-bit
    groups with bf16 scales and zeros, its bias in fp32."""

    def __init__(self, linear: torch.nn.Linear | None = None, *,
                 parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None) -> None:
        super().__init__()
        if linear is not None:
            q, scales_and_zeros = int4_groups(linear.weight)
            packed, bias = _INT4_PACK(q, 1), linear.bias
        else:
            packed, scales_and_zeros, bias = parts
        self.out_features, self.in_features = scales_and_zeros.shape[1], scales_and_zeros.shape[0] * GROUP
        self.register_buffer("packed", packed)  # [N, K/2] uint8, rows in output-channel order
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.bias = None if bias is None else bias.detach().float()

    @classmethod
    def fused(cls, modules: list["Int4Linear"]) -> "Int4Linear":
        """One module whose output is the given modules' outputs side by side (rows bitwise the same:
        the packed layout is per output channel, and the kernel computes each channel alone)."""
        biases = [m.bias for m in modules]
        bias = None if all(b is None for b in biases) else torch.cat(
            [torch.zeros(m.out_features) if b is None else b for m, b in zip(modules, biases)])
        scales_and_zeros = torch.cat([m.scales_and_zeros for m in modules], dim=1).contiguous()
        return cls(parts=(torch.cat([m.packed for m in modules]), scales_and_zeros, bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _INT4_MM(x.reshape(-1, self.in_features).bfloat16(), self.packed, GROUP, self.scales_and_zeros).float()
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*x.shape[:-1], self.out_features)


def holds(linear: torch.nn.Linear) -> bool:
    """The kernel's shapes: whole groups along the input, output channels in sixteens."""
    return linear.in_features % GROUP == 0 and linear.out_features % 16 == 0
