"""Writes a model directory with random weights of a real family's shape, for `suite.py --model DIR`
on families beyond the default Qwen3-0.6B shape (no tokenizer: the runtime takes ids).

    python ops/bench/random_model.py --shape llama-3.2-1b --out /tmp/llama-3.2-1b --device cuda
    python ops/bench/suite.py --device cuda --model /tmp/llama-3.2-1b --only multi --out ops/bench/results/NAME
"""

from __future__ import annotations

import argparse
import pathlib

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from suite_baselines import QWEN3_0_6B_SHAPE

# The published configs' shapes. The MoE is cut to 12 of its 48 layers (about 7.6B parameters,
# 15 GB in bf16) so that it, transformers' baselines and the KV fit one 80 GB GPU. The tiny one holds
# a 32k context small enough to prefill on a laptop's CPU cores (`session_fork.py` on CPU).
SHAPES = {
    "qwen3-0.6b": ("qwen3", QWEN3_0_6B_SHAPE),
    "tiny-llama-32k": ("llama", dict(
        vocab_size=49152, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=32800, tie_word_embeddings=True)),
    "llama-3.2-1b": ("llama", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192))),
    "gemma-3-1b": ("gemma3_text", dict(
        vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, max_position_embeddings=32768, sliding_window=512,
        query_pre_attn_scalar=256, layer_types=[("full_attention" if (i + 1) % 6 == 0 else "sliding_attention")
                                                for i in range(26)])),
    "qwen3-30b-a3b-12l": ("qwen3_moe", dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=12,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
        max_position_embeddings=40960, rope_theta=1000000.0)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    model_type, shape = SHAPES[args.shape]
    config = AutoConfig.for_model(model_type, bos_token_id=1, eos_token_id=2, pad_token_id=0, **shape)
    torch.manual_seed(0)
    # Initialising on the GPU is much faster than billions of random draws on the host.
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    model.save_pretrained(pathlib.Path(args.out))
    print(f"{args.shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters -> {args.out}")


if __name__ == "__main__":
    main()
