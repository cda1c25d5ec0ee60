"""Which models the hand-written decoder stacks (cuda/decoder.py, cpu/decoder.py) can run.

Both replay transformers' Llama-family layer: RMSNorm, attention with optional Q/K norm and
bias, rotary embedding, a SwiGLU MLP without bias, full attention. The CPU decoder also runs
SmolLM3's layers, the same layer where some skip the rotary embedding (NoPE layers). Anything else
keeps transformers' own modules.
"""

from __future__ import annotations

LAYERS = {"LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"}
NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "SmolLM3RMSNorm"}
NOPE_LAYERS = {"SmolLM3DecoderLayer"}  # layers whose attention has use_rope, off in some of them


def of_family(model) -> bool:
    """Every layer is a Llama-family layer (the CUDA pointwise fusion's module forms), whatever
    its variant; other families keep transformers' own modules on every path."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    return layers is not None and all(type(layer).__name__ in LAYERS for layer in layers)


def unsupported(model, nope_layers: bool = False) -> str | None:
    """Why `model` cannot run on a hand-written decoder, or None; nope_layers: the decoder skips
    the rotary embedding where a layer's attention has use_rope off (the CPU decoder does)."""
    config = model.config
    layers = LAYERS | NOPE_LAYERS if nope_layers else LAYERS
    activation = getattr(config, "hidden_act", None)
    if activation not in ("silu", "swish"):
        return f"activation {activation!r}"
    for layer in model.model.layers:
        if type(layer).__name__ not in layers:
            return f"layer {type(layer).__name__}"
        if type(layer.input_layernorm).__name__ not in NORMS:
            return f"norm {type(layer.input_layernorm).__name__}"
        if layer.mlp.gate_proj.bias is not None or layer.mlp.down_proj.bias is not None:
            return "MLP bias"
        # Mistral's layers read the window from the config, Qwen's from the module.
        if getattr(layer.self_attn, "sliding_window", None) or (
                type(layer).__name__ == "MistralDecoderLayer" and getattr(config, "sliding_window", None)):
            return "sliding-window layers"
    return None
