"""What storing K/V in fp8 (`kakeya serve --kv-dtype fp8`) does to a real model's greedy tokens.

The runtime's fp8 slabs exist only on CUDA; this measures their rounding on any machine. The model
runs in float32 with transformers' SDPA attention, except that every key and value is rounded
through the storage dtype first (e4m3 saturated at +-448, as the store kernel does, or bf16), so
the only difference between the runs is how K/V are stored. Greedy streams over chat prompts are
compared with the float32-storage run: the token index where each first differs, and how many
match to the end. bf16 storage is the baseline in the same run: it is what the runtime keeps by
default on GPUs. Prints one JSON document.

    python ops/bench/kv_fp8_quality.py --new 128            # the embedded SmolLM2, CPU
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from kakeya.runtime.engine.loader import embedded_model_path

PROMPTS = (
    "Write a Python function that merges two sorted lists into one sorted list.",
    "Explain in three sentences why the sky is blue.",
    "List five things to check before deploying a web service to production.",
    "What is the difference between a process and a thread?",
    "Summarise the plot of a story about a robot who learns to paint.",
    "Give me a short recipe for pancakes.",
    "How do I reverse a linked list in place? Describe the steps.",
    "Write a haiku about autumn rain.",
    "What are the pros and cons of working from home?",
    "Translate 'Where is the train station?' into French and Spanish.",
    "Describe how a hash table handles collisions.",
    "Suggest a name for a coffee shop and explain the choice.",
)
STORAGE = {"float32": None, "bfloat16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn}
_store_as: list[torch.dtype | None] = [None]


def _rounded(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None:
        return x
    if dtype == torch.float8_e4m3fn:
        x = x.clamp(-448, 448)
    return x.to(dtype).to(torch.float32)


def rounding_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA over keys and values as the chosen storage would hold them (rounding is idempotent,
    so rounding the cached history again each step equals storing it rounded once)."""
    dtype = _store_as[0]
    return sdpa_attention_forward(module, query, _rounded(key, dtype), _rounded(value, dtype), attention_mask, **kwargs)


def greedy(model, ids: list[int], new: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new, min_new_tokens=new, do_sample=False)
    return out[0, len(ids):].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .gguf file (default: the embedded SmolLM2)")
    parser.add_argument("--new", type=int, default=128, help="greedy tokens per prompt")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    args = parser.parse_args()
    path = embedded_model_path() if args.model is None else pathlib.Path(args.model)
    AttentionInterface.register("kv_rounding", rounding_attention)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation="kv_rounding").eval()
    model.generation_config.eos_token_id = None
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
               for text in PROMPTS[:args.prompts]]
    prompts = [p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p for p in prompts]
    streams = {}
    for name, dtype in STORAGE.items():
        _store_as[0] = dtype
        streams[name] = [greedy(model, p, args.new) for p in prompts]
    reference = streams["float32"]
    results = {}
    for name in ("bfloat16", "fp8_e4m3"):
        firsts = [next((i for i, (a, b) in enumerate(zip(s, r)) if a != b), args.new)
                  for s, r in zip(streams[name], reference)]
        results[name] = {"first_difference": firsts, "median_first_difference": statistics.median(firsts),
                         "identical_streams": sum(f == args.new for f in firsts),
                         "token_agreement": round(sum(a == b for s, r in zip(streams[name], reference)
                                                      for a, b in zip(s, r)) / (args.new * len(prompts)), 3)}
    print(json.dumps({"benchmark": "kv_fp8_quality", "model": path.name, "compute_dtype": "float32",
                      "prompts": len(prompts), "new_tokens": args.new, "torch": torch.__version__,
                      "machine": platform.machine(),
                      "note": "greedy streams with K/V rounded through each storage dtype, against float32 storage; "
                              "first_difference: index of the first differing token per prompt (new_tokens: none); "
                              "token_agreement counts position-wise equal tokens, so it drops after a first difference",
                      "storage": results}, indent=1))


if __name__ == "__main__":
    main()
