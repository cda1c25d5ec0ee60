"""The decoder stack of Llama-family models as few kernels per layer, for the CUDA path.

A small model's decode step is bound by kernel count: transformers' layer runs about twenty
kernels (three Q/K/V GEMMs, two MLP input GEMMs, separate residual adds and norms). Here a layer
is eleven: one QKV GEMM, one kernel for Q/K norm and rotary, the K/V store, attention and its
combine, the output GEMM, residual add fused with the next norm, one gate/up GEMM, SwiGLU, the
down GEMM and again add + norm. The arithmetic is transformers' (fp32 norm statistics, cast before
the weight; rotary from the same cos/sin), only grouped into fewer kernels.

Fused weights are built once and the original q/k/v and gate/up parameters become views into
them, so memory does not grow and modules sharing these layers (a truncated draft) see the same
tensors. Models of another structure keep transformers' modules (`build` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
import torch
import torch.nn.functional as F

from kakeya.runtime.forward.rows import StepLayout
from kakeya.runtime.cuda.attention import attend
from kakeya.runtime.forward.decoder_family import unsupported
from kakeya.runtime.forward.norms import norm_of, qk_norm_of, rms_norm

log = structlog.get_logger(__name__)

TABLE_ROPE = {"default", "linear", "llama3", "yarn"}  # cos/sin depend on the position alone
MAX_TABLE_POSITIONS = 1 << 18


@torch.compile(dynamic=True)
def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm(x, weight, eps)


@torch.compile(dynamic=True)
def _add_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    hidden = residual + x
    return rms_norm(hidden, weight, eps), hidden


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@torch.compile(dynamic=True)
def _rotary(q, k, cos, sin):
    cos, sin = cos[:, None], sin[:, None]
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


@torch.compile(dynamic=True)
def _norm_rotary(q, k, q_weight, k_weight, eps: float, cos, sin):
    cos, sin = cos[:, None], sin[:, None]
    return _rotate(rms_norm(q, q_weight, eps), cos, sin), _rotate(rms_norm(k, k_weight, eps), cos, sin)


@torch.compile(dynamic=True)
def _swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    half = gate_up.shape[-1] // 2
    return F.silu(gate_up[:, :half]) * gate_up[:, half:]


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor
    down: torch.Tensor
    input_norm: tuple[torch.Tensor, float]
    post_norm: tuple[torch.Tensor, float]
    qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None
    scaling: float


def _fuse(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for several linears over the same input; they become views of it."""
    weight = torch.cat([m.weight.detach() for m in linears])
    has_bias = linears[0].bias is not None
    bias = torch.cat([m.bias.detach() for m in linears]) if has_bias else None
    start = 0
    for m in linears:
        end = start + m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[start:end], requires_grad=False)
        if has_bias:
            m.bias = torch.nn.Parameter(bias[start:end], requires_grad=False)
        start = end
    return weight, bias


def _layer(module) -> _Layer:
    cached = getattr(module, "kakeya_fused", None)
    if cached is not None:
        return cached
    attn, mlp = module.self_attn, module.mlp
    qkv, qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
    gate_up, _ = _fuse([mlp.gate_proj, mlp.up_proj])
    fused = _Layer(qkv, qkv_bias, attn.o_proj.weight, attn.o_proj.bias, gate_up, mlp.down_proj.weight,
                   norm_of(module.input_layernorm), norm_of(module.post_attention_layernorm), qk_norm_of(attn),
                   float(attn.scaling))
    module.kakeya_fused = fused
    return fused


class FusedDecoder:
    """Embedding, decoder layers and final norm of a Llama-family model; returns hidden states."""

    def __init__(self, model) -> None:
        inner = model.model
        config = model.config
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.final_norm = norm_of(inner.norm)
        with torch.no_grad():
            self.layers = [_layer(layer) for layer in inner.layers]
        first = inner.layers[0].self_attn
        self.head_dim = first.head_dim
        self.q_width = config.num_attention_heads * self.head_dim
        self.k_width = config.num_key_value_heads * self.head_dim
        self.num_kv = config.num_key_value_heads
        self.table = self._cos_sin_table(config)

    @classmethod
    def build(cls, model) -> "FusedDecoder | None":
        reason = unsupported(model)
        if reason is not None:
            log.info("cuda_decoder_skipped", reason=reason)
            return None
        return cls(model)

    def _cos_sin_table(self, config) -> torch.Tensor | None:
        """[positions, 2, head_dim] cos/sin, gathered per step instead of recomputed."""
        positions = int(getattr(config, "max_position_embeddings", 0) or 0)
        if getattr(self.rotary, "rope_type", "default") not in TABLE_ROPE or not 0 < positions <= MAX_TABLE_POSITIONS:
            return None
        weight = self.embed.weight
        with torch.no_grad():
            ids = torch.arange(positions, device=weight.device)[None]
            cos, sin = self.rotary(weight[:1][None], ids)
        return torch.stack((cos[0], sin[0]), 1).contiguous()

    def _cos_sin(self, hidden: torch.Tensor, positions: torch.Tensor):
        if self.table is not None:
            both = self.table[positions]
            return both[:, 0], both[:, 1]
        cos, sin = self.rotary(hidden[None], positions[None])
        return cos[0], sin[0]

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, layout: StepLayout) -> torch.Tensor:
        """ids, positions: [rows] int64 on the device; returns [rows, hidden] after the final norm."""
        hidden = self.embed(ids)
        rows = hidden.shape[0]
        cos, sin = self._cos_sin(hidden, positions)
        residual = hidden
        normed = _norm(hidden, *self.layers[0].input_norm)
        for index, layer in enumerate(self.layers):
            qkv = F.linear(normed, layer.qkv, layer.qkv_bias)
            q = qkv[:, :self.q_width].view(rows, -1, self.head_dim)
            k = qkv[:, self.q_width:self.q_width + self.k_width].view(rows, self.num_kv, self.head_dim)
            v = qkv[:, self.q_width + self.k_width:].view(rows, self.num_kv, self.head_dim)
            if layer.qk_norm is None:
                q, k = _rotary(q, k, cos, sin)
            else:
                q, k = _norm_rotary(q, k, *layer.qk_norm, cos, sin)
            out = attend(layout, index, q, k, v, layer.scaling)
            attended = F.linear(out.view(rows, -1), layer.o, layer.o_bias)
            normed, residual = _add_norm(attended, residual, *layer.post_norm)
            mlp = F.linear(_swiglu(F.linear(normed, layer.gate_up)), layer.down)
            after = self.layers[index + 1].input_norm if index + 1 < len(self.layers) else self.final_norm
            normed, residual = _add_norm(mlp, residual, *after)
        return normed
