"""The forward of Llama-family models as plain torch calls, for the CPU path on packed weights.

A CPU decode step of a small model spends a large share of its time in Python: transformers'
modules, hooks, mask building and keyword plumbing around ~20 small ops a layer. This calls the
same ops in the same order on the same tensors (the packed linears of linear.py, the slab
attention of attention.py), without the modules, so a step is faster in both modes with every
logit bitwise equal (ops/bench/cpu_decoder_ab.py interleaves the two; docs/determinism.md).
unit/test_cpu_decoder.py
checks logits and K/V on tiny models. What is left of a step is the packed GEMMs (about half),
the attention calls and their slab indexing.

The arithmetic is transformers' own: RMSNorm in the input dtype after fp32 statistics, rotary
embedding applied to [1, heads, T, head_dim] views after an optional per-head Q/K norm, SwiGLU,
residual adds in the same operand order. Bitwise equality matters: deterministic mode's promise
(a row's stream does not depend on the batch or on how its history was appended) rests on every
op giving a row the same bits at any row count, which transformers' forward was checked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
import torch
import torch.nn.functional as F

from kakeya.runtime.cpu import linear as cpu_linear
from kakeya.runtime.cpu.attention import attend_cpu
from kakeya.runtime.cpu.held_weights import HELD, fuse
from kakeya.runtime.forward.rows import StepLayout
from kakeya.runtime.forward.decoder_family import unsupported
from kakeya.runtime.forward.norms import norm_of, qk_norm_of, rms_norm

log = structlog.get_logger(__name__)


# In-place forms of transformers' ops where the operand is a fresh tensor: the same elementwise
# arithmetic (a * b and a + b are exact in either order), without allocating; every call is a few
# microseconds of a decode step, and a fresh prefill-sized tensor is memory to fault in.
def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1).mul_(sin)
    return (x * cos).add_(rotated)


@dataclass(frozen=True, slots=True)
class _Linear:
    packed: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    held: torch.nn.Module | None = None  # weights held quantized (cpu/held_weights.py) instead of packed fp32


@dataclass(frozen=True, slots=True)
class _Layer:
    q: _Linear
    k: _Linear
    v: _Linear
    o: _Linear
    gate: _Linear
    up: _Linear
    down: _Linear
    input_norm: tuple[torch.Tensor, float]
    post_norm: tuple[torch.Tensor, float]
    qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None
    scaling: float
    rope: bool  # False in SmolLM3's NoPE layers
    # Quantized weights: q/k/v and gate/up as one held matrix each (one kernel call instead of
    # three or two; the outputs are views of its columns), None where not fused.
    qkv: _Linear | None = None
    gate_up: _Linear | None = None


def _linear(module) -> _Linear:
    if isinstance(module, HELD):
        return _Linear(None, None, None, module)
    return _Linear(module.packed, module.weight, module.bias)


def _fused(modules: list) -> _Linear | None:
    held = fuse(modules)
    return None if held is None else _Linear(None, None, None, held)


def _layer(module) -> _Layer:
    attn, mlp = module.self_attn, module.mlp
    return _Layer(_linear(attn.q_proj), _linear(attn.k_proj), _linear(attn.v_proj), _linear(attn.o_proj),
                  _linear(mlp.gate_proj), _linear(mlp.up_proj), _linear(mlp.down_proj),
                  norm_of(module.input_layernorm), norm_of(module.post_attention_layernorm), qk_norm_of(attn),
                  float(attn.scaling), bool(getattr(attn, "use_rope", True)),
                  _fused([attn.q_proj, attn.k_proj, attn.v_proj]), _fused([mlp.gate_proj, mlp.up_proj]))


class CpuDecoder:
    """Embedding to logits of a Llama-family model whose linears are packed (cpu_linear.pack_linears)
    or held quantized (cpu/held_weights.py)."""

    def __init__(self, model, mode: cpu_linear.PackedMode) -> None:
        inner = model.model
        self.mode = mode
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.final_norm = norm_of(inner.norm)
        self.lm_head = _linear(model.lm_head)
        self.layers = [_layer(layer) for layer in inner.layers]
        self.head_dim = inner.layers[0].self_attn.head_dim

    @classmethod
    def build(cls, model, mode: cpu_linear.PackedMode) -> "CpuDecoder | None":
        """None where the model is not of the family, or a linear is not packed."""
        reason = unsupported(model, nope_layers=True)
        if reason is not None:
            log.info("cpu_decoder_skipped", reason=reason)
            return None
        linears = [model.lm_head]
        for layer in model.model.layers:
            linears += [m for part in (layer.self_attn, layer.mlp) for m in part.children()
                        if isinstance(m, (torch.nn.Linear, *HELD))]
        if not all(isinstance(m, (cpu_linear.PackedLinear, *HELD)) for m in linears):
            log.info("cpu_decoder_skipped", reason="a linear without packed weights")
            return None
        return cls(model, mode)

    def _apply(self, x: torch.Tensor, linear: _Linear) -> torch.Tensor:
        if linear.held is not None:
            return linear.held.forward(x)  # a module call's hook machinery is a share of a small call
        return cpu_linear.apply(x, linear.packed, linear.weight, linear.bias, self.mode.deterministic)

    def _attention(self, index: int, layer: _Layer, x: torch.Tensor, cos, sin, layout: StepLayout):
        shape = (*x.shape[:-1], -1, self.head_dim)  # [1, T, heads, head_dim]
        if layer.qkv is not None:
            sizes = (layer.q.held.out_features, layer.k.held.out_features, layer.v.held.out_features)
            q, k, v = self._apply(x, layer.qkv).split(sizes, dim=-1)
        else:
            q, k, v = self._apply(x, layer.q), self._apply(x, layer.k), self._apply(x, layer.v)
        q, k = q.view(shape), k.view(shape)
        if layer.qk_norm is not None:
            q_weight, k_weight, eps = layer.qk_norm
            q, k = rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(shape).transpose(1, 2)
        if layer.rope:
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = attend_cpu(layout, index, q, k, v, layer.scaling)
        return self._apply(out.reshape(*x.shape[:-1], -1).contiguous(), layer.o)

    def _gated(self, x: torch.Tensor, layer: _Layer) -> torch.Tensor:
        if layer.gate_up is None:
            gate, up = self._apply(x, layer.gate), self._apply(x, layer.up)
        else:
            gate, up = layer.gate_up.held.forward(x).split(layer.gate.held.out_features, dim=-1)
        return F.silu(gate, inplace=True).mul_(up)

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, layout: StepLayout,
                 keep_rows: torch.Tensor | None) -> torch.Tensor | None:
        """ids, positions: [1, rows]. Returns [1, kept rows, vocab] logits, or None without keep_rows
        (a prefill-only step skips the lm_head)."""
        hidden = self.embed(ids)
        cos, sin = self.rotary(hidden, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for index, layer in enumerate(self.layers):
            attended = self._attention(index, layer, rms_norm(hidden, *layer.input_norm), cos, sin, layout)
            hidden = attended.add_(hidden)
            x = rms_norm(hidden, *layer.post_norm)
            hidden = self._apply(self._gated(x, layer), layer.down).add_(hidden)
        if keep_rows is None:
            return None
        return self._apply(rms_norm(hidden, *self.final_norm)[:, keep_rows, :], self.lm_head)
