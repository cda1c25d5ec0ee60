"""CPU linears on int8 weights, for quantized (GGUF Q4/Q8) models whose fp32 copy is the cost.

A CPU decode step of a small model reads every weight once per step: in fp32 that is four bytes a
weight, and the step waits on memory. Held as int8 (one scale per output channel, symmetric), a
weight is one byte, and fbgemm's u8s8 GEMM (torch's quantized engine, made for this) accumulates
in int32. Activations are quantized per call; fbgemm takes one scale for the whole call, so each
row is first divided by its own largest magnitude and a fixed anchor row ([1, -1, 0, ...]) joins
the call: the call's range is then always [-1, 1], every row is quantized with the same scale
whatever its neighbours, and integer accumulation is exact, so a row's result does not depend on
the batch (deterministic mode holds; unit/test_int8_linear.py checks it). Activations use 8 bits
where the CPU has VNNI; elsewhere 7 (fbgemm's reduce_range), which keeps the 16-bit pair sums of
its pre-VNNI kernels from saturating.

Not exact: each weight moves by up to half a step of its channel's int8 grid (the fp32 weights a
GGUF file dequantizes to are not on that grid), and each activation by half a step of its row's grid.
"""

from __future__ import annotations

import warnings

import torch


def _has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


REDUCE_RANGE = not _has_vnni()
ACTIVATION_BITS = 7 if REDUCE_RANGE else 8


def available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines or "x86" in torch.backends.quantized.supported_engines


class Int8Linear(torch.nn.Module):
    """Replaces an nn.Linear: its weight as prepacked int8 with per-channel scales, its bias in fp32."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(1) / 127).clamp_min(1e-12).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors' deprecation notice: the op is what is used
            qweight = torch.quantize_per_channel(weight, scales, torch.zeros_like(scales, dtype=torch.long), 0,
                                                 torch.qint8)
        self.packed_int8 = torch.ops.quantized.linear_prepack(qweight, None)
        self.anchor = torch.zeros(1, self.in_features)
        self.anchor[0, :2] = torch.tensor([1.0, -1.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        magnitude = flat.abs().amax(1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)
        out = torch.ops.quantized.linear_dynamic(torch.cat((flat / magnitude, self.anchor)), self.packed_int8, REDUCE_RANGE)
        out = out[:-1].mul_(magnitude)
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*x.shape[:-1], self.out_features)


def quantize_linears(model: torch.nn.Module) -> int:
    """Replaces every nn.Linear of the model with an Int8Linear, once; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, Int8Linear(child))
                count += 1
    return count
