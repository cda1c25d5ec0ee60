"""Tiny randomly-initialised models of the decoder-only families people run, each built from its
family's real config class with a few small layers, and the transformers oracle for each.

The shapes keep each family's distinguishing parts: sliding-window and hybrid layer patterns
(windows of 8 tokens, so short prompts already run past them), logit soft-capping, attention
sinks, Q/K norms, biases, NoPE layers and mixture-of-experts MLPs.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import kakeya.runtime.engine.attention_hook  # noqa: F401  (registers the "kakeya" attention function)
from kakeya.runtime.engine.loader import describe
from kakeya.runtime.forward.loaded_model import LoadedModel

VOCAB = 128
WINDOW = 8
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
HYBRID = dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"])
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)

# model_type -> what its config needs beyond COMMON to show the family's distinguishing parts.
FAMILIES: dict[str, dict] = {
    "llama": {},
    "qwen2": dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),  # layer 1 windowed
    "qwen3": dict(head_dim=16),  # Q/K norm
    "mistral": dict(sliding_window=WINDOW),  # every layer windowed, no layer_types
    "gemma2": dict(head_dim=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, **HYBRID),
    "gemma3_text": dict(head_dim=16, **HYBRID),  # per-layer RoPE (local and global bases)
    "phi3": {},  # fused QKV and gate/up projections
    "olmo2": {},  # Q/K norm over all heads, post-norms
    "granite": dict(embedding_multiplier=2.0, attention_multiplier=0.2, residual_multiplier=0.5, logits_scaling=2.0),
    "qwen3_moe": dict(head_dim=16, num_experts=4, **MOE),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "smollm3": dict(no_rope_layers=[1, 0]),  # layer 1 without RoPE
    "gpt_oss": dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2, **HYBRID),  # sinks, MoE
    "starcoder2": dict(sliding_window=WINDOW),  # biases, LayerNorm, GELU MLP
    "gpt2": dict(n_inner=96),  # learned absolute positions, Conv1D projections
}


def build_reference(model_type: str, **overrides) -> torch.nn.Module:
    """The plain transformers model on its eager attention (the family's reference arithmetic)."""
    config = AutoConfig.for_model(model_type, **{**COMMON, **FAMILIES[model_type], **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.set_attn_implementation("eager")
    return model.eval()


def load_family(model_type: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                **overrides) -> tuple[LoadedModel, torch.nn.Module]:
    """(the engine's LoadedModel on the kakeya attention, the identical eager reference)."""
    reference = build_reference(model_type, **overrides).to(device, dtype)
    engine_model = copy.deepcopy(reference)
    engine_model.set_attn_implementation("kakeya")
    return describe(engine_model, model_id=f"tiny-{model_type}", device=torch.device(device), dtype=dtype), reference


def generate(reference: torch.nn.Module, tokens: list[int], count: int) -> list[int]:
    """transformers' greedy continuation, `count` tokens long, EOS ignored."""
    reference.generation_config.eos_token_id = None
    device = next(reference.parameters()).device
    with torch.no_grad():
        out = reference.generate(torch.tensor([tokens], device=device), max_new_tokens=count, do_sample=False,
                                 min_new_tokens=count, pad_token_id=0)
    return out[0, len(tokens):].tolist()
