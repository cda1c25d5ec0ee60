"""Many-session throughput against the Generate stream's min_tokens_per_message, on one server.

Each round runs N concurrent sessions (prompt, then generate) once per minimum, interleaved so
drift of the host hits every setting alike; the client asks for up to --tokens-per-message a
message. The baseline is minimum 1 (a message as soon as a token is ready), in the same run and
on the same server; the JSON reports each minimum's medians and their ratio to it. Per-token ITL
means little above 1 (tokens of one message arrive together): itl_p99_ms then shows how long a
message waits.

    python ops/bench/message_minimum.py --device cuda --sessions 64 --minimums 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import statistics
import tempfile

import torch

import suite_kakeya as kakeya
from suite import CUDA_KV_BUDGET_BYTES, model_source, random_ids

FIGURES = ("tok_s", "decode_tok_s", "ttft_p50_s", "itl_p50_ms", "itl_p99_ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", help="as suite.py's --model")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--minimums", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--tokens-per-message", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    minimums = sorted({1, *args.minimums})
    if max(minimums) > args.tokens_per_message:
        parser.error("every minimum must be at most --tokens-per-message")
    rng = random.Random(args.seed)
    extra = ["--kv-budget-bytes", str(CUDA_KV_BUDGET_BYTES)] if args.device == "cuda" else []
    runs: dict[int, list[dict]] = {minimum: [] for minimum in minimums}
    with tempfile.TemporaryDirectory(prefix="kakeya-minimum-") as scratch:
        source, described = model_source(args, pathlib.Path(scratch))
        vocab = _vocab_size(source)
        with kakeya.served(source, args.device, args.dtype, args.sessions + 2, extra) as server:
            for _ in range(args.rounds):
                for minimum in minimums:
                    prompts = random_ids(rng, args.sessions, args.prompt, vocab)
                    runs[minimum].append(kakeya.multi_session(server.address, prompts, args.new, min(args.new, 8),
                                                              args.tokens_per_message, minimum))
    medians = {minimum: {name: statistics.median(run[name] for run in rows) for name in FIGURES}
               for minimum, rows in runs.items()}
    print(json.dumps({
        "benchmark": "message_minimum", "model": described, "device": args.device, "dtype": args.dtype,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "sessions": args.sessions, "prompt_tokens": args.prompt, "new_tokens": args.new,
        "max_tokens_per_message": args.tokens_per_message, "rounds": args.rounds,
        "results": [{"min_tokens_per_message": minimum, "median": medians[minimum],
                     "tok_s_vs_minimum_1": round(medians[minimum]["tok_s"] / medians[1]["tok_s"], 3),
                     "tok_s": [run["tok_s"] for run in runs[minimum]]} for minimum in minimums],
    }, indent=2))


def _vocab_size(source: str) -> int:
    from transformers import AutoConfig

    path = pathlib.Path(source)
    if path.suffix == ".gguf":
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    else:
        config = AutoConfig.from_pretrained(path)
    return config.vocab_size


if __name__ == "__main__":
    main()
