"""Fewer kernels per decode step on CUDA: the pointwise work around the GEMMs, compiled once.

A decode step of a small model is bound by kernel count, not by arithmetic: transformers' RMSNorm
is seven kernels, SwiGLU three, rotary embedding about six per tensor. Each is replaced here by
one torch.compile'd kernel with the same arithmetic in the same order (fp32 statistics, cast back
before the weight). The GEMMs stay cuBLAS calls. Shapes are dynamic, so one compilation serves
every batch size, and compilation happens in warm-up runs, never inside a graph capture.

Only the model instance given is changed (instance attributes), except the rotary function, which
transformers looks up in the model's module: that replacement is equivalent and process-wide.
"""

from __future__ import annotations

import sys

import structlog
import torch
import torch.nn.functional as F

from kakeya.runtime.forward.decoder_family import of_family
from kakeya.runtime.forward.norms import rms_norm

log = structlog.get_logger(__name__)


@torch.compile(dynamic=True)
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm(x, weight, eps)


@torch.compile(dynamic=True)
def _silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@torch.compile(dynamic=True)
def _apply_rotary(q, k, cos, sin, unsqueeze_dim: int = 1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def _norm_forward(norm: torch.nn.Module):
    eps = float(norm.variance_epsilon)
    return lambda hidden_states: _rms_norm(hidden_states, norm.weight, eps)


def _mlp_forward(mlp: torch.nn.Module):
    return lambda x: mlp.down_proj(_silu_mul(mlp.gate_proj(x), mlp.up_proj(x)))


def fuse_pointwise(model: torch.nn.Module) -> dict[str, int]:
    """Swaps in the compiled pointwise kernels where the module is of the known form."""
    counts = {"rms_norm": 0, "swiglu": 0, "rotary": 0}
    if not of_family(model):
        # Other families' norms, MLPs and rotary functions differ in form (Gemma's 1 + weight,
        # partial rotary, fused projections): they keep transformers' own arithmetic.
        log.info("cuda_fusion_skipped", reason=f"model type {model.config.model_type!r}")
        return counts
    activation = getattr(model.config, "hidden_act", None)
    if activation not in ("silu", "swish"):
        log.info("cuda_fusion_skipped", reason=f"activation {activation!r}")
        return counts
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = _norm_forward(module)
            counts["rms_norm"] += 1
        elif all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj")):
            module.forward = _mlp_forward(module)
            counts["swiglu"] += 1
    modeling = sys.modules.get(type(model).__module__)
    if modeling is not None and hasattr(modeling, "apply_rotary_pos_emb"):
        modeling.apply_rotary_pos_emb = _apply_rotary
        counts["rotary"] = 1
    log.info("cuda_fusion", **counts)
    return counts
