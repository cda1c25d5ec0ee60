"""Speculative decoding throughput: tok/s with and without speculation, in the same run, over gRPC.

Each mode (none, ngram, draft) gets a runtime of its own in this process, served over gRPC on a
unix socket and driven like a client would; the model is loaded once and shared. Two workloads
of N concurrent greedy sessions: (a) agent-style traffic that echoes code and tool output back,
(b) free chat. Reports tok/s, the ratio to no speculation, acceptance, and whether each stream
equals the one without speculation. Prints one JSON document (`--save` also writes it to
ops/bench/results/).

    python ops/bench/speculative.py --sessions 4 --new 64                    # CPU, embedded SmolLM2
    python ops/bench/speculative.py --device cuda --dtype bfloat16 --sessions 16 --new 128 --save
    python ops/bench/speculative.py --model /models/Qwen3-8B --draft-model /models/Qwen3-0.6B --device cuda

Random-weight models give no meaningful acceptance: pass a real model (default: the embedded
SmolLM2 GGUF). Without --draft-model, the draft is the verifier's first --draft-layers layers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import platform
import tempfile
import time

import grpc
import torch

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc
from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.common.config import (EngineConfig, ModelConfig, RuntimeConfig, ServerConfig, SessionLimits,
                                   SpeculativeConfig)
from kakeya.runtime.engine.draft import load_draft
from kakeya.runtime.server.log_setup import configure_logging
from kakeya.runtime.engine.loader import embedded_model_path, load_model
from kakeya.runtime.engine.runner import model_thread
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.server import RuntimeServer

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

CODE = [
    ("parse_args", "parse_options", "import argparse\n\n\ndef parse_args(argv=None):\n    parser = argparse.ArgumentParser("
     "description=\"Resize images\")\n    parser.add_argument(\"src\", help=\"input folder\")\n    parser.add_argument("
     "\"dst\", help=\"output folder\")\n    parser.add_argument(\"--width\", type=int, default=640)\n    parser."
     "add_argument(\"--quality\", type=int, default=85)\n    return parser.parse_args(argv)\n"),
    ("retry", "with_retries", "import time\n\n\ndef retry(fn, attempts=3, delay_s=0.5):\n    for attempt in range(attempts):"
     "\n        try:\n            return fn()\n        except ConnectionError:\n            if attempt == attempts - 1:\n"
     "                raise\n            time.sleep(delay_s * 2 ** attempt)\n"),
    ("Cache", "LruCache", "from collections import OrderedDict\n\n\nclass Cache:\n    def __init__(self, size):\n"
     "        self.size = size\n        self.items = OrderedDict()\n\n    def get(self, key):\n        if key not in "
     "self.items:\n            return None\n        self.items.move_to_end(key)\n        return self.items[key]\n\n"
     "    def put(self, key, value):\n        self.items[key] = value\n        self.items.move_to_end(key)\n"
     "        if len(self.items) > self.size:\n            self.items.popitem(last=False)\n"),
    ("total", "subtotal", "def summarize(orders):\n    total = 0\n    for order in orders:\n        if order[\"status\"] "
     "== \"paid\":\n            total += order[\"amount\"]\n    print(f\"paid orders: {total:.2f}\")\n    return total\n"),
]
TOOLS = [
    ("list_files", "src/app.py\nsrc/models/user.py\nsrc/models/order.py\nsrc/views/home.py\ntests/test_app.py\n"
     "tests/test_models.py\nREADME.md\npyproject.toml\n"),
    ("http_get", '{"status": 200, "user": {"id": 4812, "name": "Ada Lovelace", "email": "ada@example.com", '
     '"roles": ["admin", "editor"], "last_login": "2024-03-02T10:15:00Z"}}'),
    ("run_tests", "============ test session starts ============\ncollected 8 items\n\ntests/test_app.py ....F.\n"
     "tests/test_models.py ..\n\nFAILED tests/test_app.py::test_checkout - KeyError: 'currency'\n"
     "======= 1 failed, 7 passed in 0.61s =======\n"),
    ("sql_query", "id | name       | city     | orders\n---+------------+----------+-------\n 1 | Alice      | Berlin   |"
     "     12\n 2 | Bob        | Madrid   |      3\n 3 | Chen       | Shanghai |     27\n 4 | Dana       | Toronto  |"
     "      9\n"),
]
CHAT = [
    "What are the main differences between a violin and a viola?",
    "Write a short story about a lighthouse keeper.",
    "How does compound interest work?",
    "Give me a recipe idea for a rainy evening.",
    "Why is the ocean salty?",
    "What should I pack for a weekend hiking trip?",
    "Explain how vaccines train the immune system.",
    "Describe the city of Rome to a first-time visitor.",
]


def agent_messages() -> list[str]:
    code = [f"Here is `{old}` from my project:\n```python\n{src}```\nRewrite the whole snippet, renaming `{old}` "
            f"to `{new}`. Output only the code." for old, new, src in CODE]
    tools = [f"The `{tool}` tool returned:\n{out}\nRepeat the tool output exactly, then say what it shows."
             for tool, out in TOOLS]
    return [m for pair in zip(code, tools) for m in pair]


def load_tokenizer(model: str | None):
    from transformers import AutoTokenizer

    if model is None:
        path = embedded_model_path()
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    path = pathlib.Path(model)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(model, local_files_only=True)


def encode(tokenizer, messages: list[str], count: int) -> list[list[int]]:
    prompts = []
    for i in range(count):
        message = messages[i % len(messages)]
        if tokenizer.chat_template:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
        else:
            ids = tokenizer(message)["input_ids"]
        prompts.append(list(ids))
    return prompts


async def run_workload(stub, prompts: list[list[int]], new_tokens: int) -> dict:
    """All sessions at once; wall time from the first request to the last token."""
    async def one(prompt: list[int]):
        sid = (await stub.CreateSession(pb.CreateSessionRequest(no_default_eos=True))).session_id
        await stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=prompt))
        tokens, done = [], None
        async for response in stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=new_tokens)):
            if response.WhichOneof("payload") == "token_id":
                tokens.append(response.token_id)
            elif response.WhichOneof("payload") == "done":
                done = response.done
        await stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
        return tokens, done, time.perf_counter()

    started = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    wall_s = max(ended for _, _, ended in results) - started
    drafted = sum(done.draft_token_count for _, done, _ in results)
    accepted = sum(done.accepted_draft_token_count for _, done, _ in results)
    generated = sum(len(tokens) for tokens, _, _ in results)
    return {"streams": [tokens for tokens, _, _ in results], "wall_s": wall_s, "generated": generated,
            "drafted": drafted, "accepted": accepted}


async def bench_mode(config: RuntimeConfig, loaded, draft, workloads: dict, new_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        socket = f"{tmp}/kakeya.sock"
        config = RuntimeConfig(model=config.model, engine=config.engine, limits=config.limits,
                               server=ServerConfig(unix_socket=socket, grace_s=1.0),
                               speculative=config.speculative)
        server = RuntimeServer(config)
        address = await server.start()
        runtime = Host(config, loaded, executor=model_thread(), draft=draft)
        # As Host.load does: on CUDA, capture the step graphs before anything is timed.
        for runner in (runtime.runner, runtime.draft_runner):
            if runner is not None:
                await asyncio.get_running_loop().run_in_executor(runtime.runner.executor, runner.warm_up,
                                                                 config.engine.max_step_tokens)
        await server.attach(runtime)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
                await run_workload(stub, [next(iter(workloads.values()))[0]], 4)  # warm-up
                out = {}
                for name, prompts in workloads.items():
                    forwards = runtime.scheduler.stats.num_forwards
                    result = await run_workload(stub, prompts, new_tokens)
                    result["forwards"] = runtime.scheduler.stats.num_forwards - forwards
                    out[name] = result
                return out
        finally:
            await server.stop(1.0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a real model (default: the embedded SmolLM2 GGUF)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent sessions per workload")
    parser.add_argument("--new", type=int, default=64, help="tokens generated per session")
    parser.add_argument("--num-draft-tokens", type=int, default=4)
    parser.add_argument("--draft-layers", type=int, default=8, help="truncated-verifier draft (without --draft-model)")
    parser.add_argument("--draft-model", default=None, help="a draft model sharing the verifier's vocabulary")
    parser.add_argument("--modes", nargs="+", default=["none", "ngram", "draft"], choices=["none", "ngram", "draft"])
    parser.add_argument("--deterministic", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--save", action="store_true", help="also write the JSON to ops/bench/results/")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_logging("console", "warning")
    if "none" not in args.modes:
        args.modes.insert(0, "none")  # the baseline every ratio is measured against

    model_config = ModelConfig(model=args.model, device=args.device, dtype=args.dtype)
    executor = model_thread()
    loaded = executor.submit(load_model, model_config, ATTENTION_NAME).result()
    executor.shutdown()
    tokenizer = load_tokenizer(args.model)
    workloads = {"agent": encode(tokenizer, agent_messages(), args.sessions),
                 "chat": encode(tokenizer, CHAT, args.sessions)}
    deterministic = {"auto": None, "on": True, "off": False}[args.deterministic]
    engine = EngineConfig(kv_budget_bytes=8 * 1024**3, deterministic=deterministic)
    limits = SessionLimits(max_sessions=max(64, args.sessions))

    results: dict[str, dict] = {}
    draft_id = None
    for mode in args.modes:
        speculative = SpeculativeConfig()
        if mode != "none":
            speculative = SpeculativeConfig(
                mode=mode, num_draft_tokens=args.num_draft_tokens,
                draft_model=args.draft_model if mode == "draft" else None,
                draft_layers=args.draft_layers if mode == "draft" and not args.draft_model else 0)
        config = RuntimeConfig(model=model_config, engine=engine, limits=limits, speculative=speculative)
        draft = load_draft(speculative, model_config, loaded, ATTENTION_NAME)
        if draft is not None:
            draft_id = draft.model_id
        results[mode] = await bench_mode(config, loaded, draft, workloads, args.new)

    report = []
    for workload in workloads:
        base = results["none"][workload]
        row = {"workload": workload, "none_tok_s": round(base["generated"] / base["wall_s"], 2)}
        for mode in args.modes[1:]:
            r = results[mode][workload]
            tok_s = r["generated"] / r["wall_s"]
            row[f"{mode}_tok_s"] = round(tok_s, 2)
            row[f"{mode}_ratio_vs_none"] = round(tok_s / row["none_tok_s"], 3)
            row[f"{mode}_acceptance_rate"] = round(r["accepted"] / r["drafted"], 3) if r["drafted"] else None
            row[f"{mode}_draft_tokens"] = r["drafted"]
            row[f"{mode}_tokens_per_forward_per_session"] = round(
                r["generated"] / max(r["forwards"], 1) / len(r["streams"]), 3)
            row[f"{mode}_streams_identical_to_none"] = sum(a == b for a, b in zip(r["streams"], base["streams"]))
        report.append(row)
    document = {
        "benchmark": "speculative",
        "model": loaded.model_id, "draft": draft_id, "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."), "deterministic": args.deterministic,
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "sessions": args.sessions, "new_tokens": args.new, "num_draft_tokens": args.num_draft_tokens,
        "note": ("tok_s: generated tokens over wall time (prefill included) of all sessions, concurrent, "
                 "greedy; ratio: against no speculation in the same run; acceptance: accepted / drafted tokens; "
                 "tokens_per_forward_per_session: tokens each session gained per verifier forward"),
        "results": report,
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.save:
        device = loaded.device.type
        model = pathlib.Path(loaded.model_id).stem.split('.')[0].lower()
        name = f"speculative_{device}_{model}_{args.sessions}sessions.json"
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / name).write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
