"""RMSNorm as transformers' Llama-family modules compute it, for the decoders that replay their layers.

One implementation for the CPU decoder and, inside torch.compile'd kernels, the CUDA decoder and
the CUDA path's pointwise fusion: every path's norm then gives the same bits as transformers'
module, which deterministic mode and the exactness tests rely on.
"""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' arithmetic: statistics in fp32, eps added before the rsqrt, the normalised
    values cast back to x's dtype before the weight multiplies them.

    In-place forms where the operand is a fresh tensor, without the no-op casts of an fp32 x: the
    same elementwise arithmetic (a * b is exact in either order) with fewer allocations, which a
    CPU decode step feels; torch.compile traces them to the same out-of-place ops."""
    dtype = x.dtype
    x32 = x if dtype == torch.float32 else x.to(torch.float32)
    scale = x32.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
    x32 = x32 * scale
    return x32.mul_(weight) if dtype == torch.float32 else weight * x32.to(dtype)


def norm_of(module) -> tuple[torch.Tensor, float]:
    """An RMSNorm module's (weight, eps), as rms_norm takes them."""
    return module.weight, float(module.variance_epsilon)


def qk_norm_of(attn) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """An attention module's per-head Q and K norms (q weight, k weight, eps), or None without them."""
    if not hasattr(attn, "q_norm"):
        return None
    return attn.q_norm.weight, attn.k_norm.weight, float(attn.q_norm.variance_epsilon)
