"""Speculative decoding throughput: tok/s with and without speculation, in the same run, over gRPC.

Each mode (none, suffix, ngram, draft) gets a fresh runtime of its own for every workload and
round, in this process, served over gRPC on a unix socket and driven like a client would; the
model is loaded once and shared. Workloads (greedy, concurrent sessions, `agent_traffic.py`):
(a) agent sessions over several turns that re-emit the model's own code with edits, call a tool
with a fixed JSON schema and quote the tool's output; (b) free chat at each of --chat-sessions.
Rounds run the modes in alternating order, so drift on a shared machine falls on both sides.
Reports tok/s, the ratio to no speculation per round and its median, acceptance, tokens per decode
row (the acceptance length per step), the host microseconds spent proposing per step, whether
each stream equals the one without speculation, and the echo bound of each workload's plain
streams (`echo_bound.py`: the tokens per step that drafting from a session's own history could
reach at best). Prints one JSON document (`--save` also writes it
to ops/bench/results/).

    python ops/bench/speculative.py                                          # CPU, embedded SmolLM2
    python ops/bench/speculative.py --device cuda --dtype bfloat16 --agent-sessions 1 16 --chat-sessions 1 16 64 --save
    python ops/bench/speculative.py --model /models/Qwen3-8B --modes none suffix --device cuda

Random-weight models give no meaningful acceptance: pass a real model (default: the embedded
SmolLM2 GGUF). Without --draft-model, the draft is the verifier's first --draft-layers layers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import platform
import statistics
import sys
import tempfile

import grpc
import torch

from agent_traffic import CHAT, Turns, agent_session, agent_turns, chat_session, run_sessions
from echo_bound import echo_bound
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


def sessions_of(workload: str, count: int, stub, turns: Turns, chat: list[list[int]], args) -> list:
    if workload == "agent":
        return [agent_session(stub, turns, agent_turns(i), args.agent_new) for i in range(count)]
    return [chat_session(stub, chat[i % len(chat)], args.chat_new) for i in range(count)]


async def bench_once(config: RuntimeConfig, loaded, draft, workload: str, count: int, turns: Turns,
                     chat: list[list[int]], args) -> dict:
    """One workload on a fresh runtime: nothing proposed from an earlier run's outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        config = RuntimeConfig(model=config.model, engine=config.engine, limits=config.limits,
                               server=ServerConfig(unix_socket=f"{tmp}/kakeya.sock", grace_s=1.0),
                               speculative=config.speculative)
        server = RuntimeServer(config)
        address = await server.start()
        runtime = Host(config, loaded, executor=model_thread(), draft=draft)
        # As Host.load does: on CUDA, capture the step graphs before anything is timed.
        await asyncio.get_running_loop().run_in_executor(runtime.runner.executor, runtime.engine.warm_up,
                                                         config.engine.max_step_tokens)
        await server.attach(runtime)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
                await run_sessions([chat_session(stub, turns.first("Hello!"), 4)])  # warm-up
                forwards = runtime.scheduler.stats.num_forwards
                result = await run_sessions(sessions_of(workload, count, stub, turns, chat, args))
                result["forwards"] = runtime.scheduler.stats.num_forwards - forwards
                result["proposal"] = runtime.speculator.stats
                return result
        finally:
            await server.stop(1.0)


def summary(runs: list[dict], bases: list[dict]) -> dict:
    """One mode on one workload over the rounds, against no speculation in the same rounds."""
    ratios = [(r["generated"] / r["wall_s"]) / (b["generated"] / b["wall_s"]) for r, b in zip(runs, bases)]
    drafted, accepted = sum(r["drafted"] for r in runs), sum(r["accepted"] for r in runs)
    out = {"tok_s": [round(r["generated"] / r["wall_s"], 2) for r in runs],
           "ratio_vs_none": [round(x, 3) for x in ratios], "median_ratio_vs_none": round(statistics.median(ratios), 3),
           "acceptance_rate": round(accepted / drafted, 3) if drafted else None, "draft_tokens": drafted,
           "streams_identical_to_none": sum(a == b for r, base in zip(runs, bases)
                                            for a, b in zip(r["streams"], base["streams"])),
           "streams": sum(len(r["streams"]) for r in runs)}
    stats = [r["proposal"] for r in runs]
    if any(s.steps for s in stats):
        rows = sum(s.decode_rows for s in stats)
        out["tokens_per_decode_row"] = round((rows + sum(s.accepted_tokens for s in stats)) / max(rows, 1), 3)
        out["drafted_row_share"] = round(sum(s.drafted_rows for s in stats) / max(rows, 1), 3)
        out["host_us_per_step"] = round(1e6 * sum(s.host_seconds for s in stats) / sum(s.steps for s in stats), 1)
    return out


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a real model (default: the embedded SmolLM2 GGUF)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--agent-sessions", type=int, nargs="*", default=[8], help="concurrent agent sessions")
    parser.add_argument("--chat-sessions", type=int, nargs="*", default=[1, 16], help="concurrent chat sessions")
    parser.add_argument("--agent-new", type=int, default=160, help="most tokens generated per agent turn")
    parser.add_argument("--chat-new", type=int, default=64, help="tokens generated per chat session")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions, modes in alternating order")
    parser.add_argument("--num-draft-tokens", type=int, default=None, help="default: the mode's own")
    parser.add_argument("--draft-layers", type=int, default=8, help="truncated-verifier draft (without --draft-model)")
    parser.add_argument("--draft-model", default=None, help="a draft model sharing the verifier's vocabulary")
    parser.add_argument("--modes", nargs="+", default=["none", "suffix", "ngram"],
                        choices=["none", "suffix", "ngram", "draft"])
    parser.add_argument("--deterministic", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--save", default=None, metavar="NAME", help="also write ops/bench/results/NAME.json")
    return parser.parse_args()


async def main() -> None:
    args = arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_logging("console", "warning")
    modes = ["none"] + [m for m in args.modes if m != "none"]  # the baseline every ratio is measured against
    model_config = ModelConfig(model=args.model, device=args.device, dtype=args.dtype)
    executor = model_thread()
    loaded = executor.submit(load_model, model_config, ATTENTION_NAME).result()
    executor.shutdown()
    tokenizer = load_tokenizer(args.model)
    turns, chat = Turns(tokenizer), encode(tokenizer, CHAT, len(CHAT))
    deterministic = {"auto": None, "on": True, "off": False}[args.deterministic]
    engine = EngineConfig(kv_budget_bytes=8 * 1024**3, deterministic=deterministic)
    limits = SessionLimits(max_sessions=max(64, *args.agent_sessions, *args.chat_sessions))
    configs, drafts = {}, {}
    for mode in modes:
        speculative = SpeculativeConfig()
        if mode != "none":
            speculative = SpeculativeConfig(
                mode=mode, num_draft_tokens=args.num_draft_tokens,
                draft_model=args.draft_model if mode == "draft" else None,
                draft_layers=args.draft_layers if mode == "draft" and not args.draft_model else 0)
        configs[mode] = RuntimeConfig(model=model_config, engine=engine, limits=limits, speculative=speculative)
        drafts[mode] = load_draft(speculative, model_config, loaded, ATTENTION_NAME)
    workloads = [("agent", n) for n in args.agent_sessions] + [("chat", n) for n in args.chat_sessions]
    runs: dict[tuple[str, int, str], list[dict]] = {}
    for round_ in range(args.rounds):
        for workload, count in workloads:
            for mode in (modes if round_ % 2 == 0 else modes[::-1]):
                result = await bench_once(configs[mode], loaded, drafts[mode], workload, count, turns, chat, args)
                runs.setdefault((workload, count, mode), []).append(result)
                # Progress on stderr, so a run cut off by a time limit still shows what it measured.
                print(json.dumps({"round": round_, "workload": workload, "sessions": count, "mode": mode,
                                  "tok_s": round(result["generated"] / result["wall_s"], 2),
                                  "drafted": result["drafted"], "accepted": result["accepted"]}), file=sys.stderr,
                      flush=True)
    report = []
    for workload, count in workloads:
        bases = runs[(workload, count, "none")]
        row = {"workload": workload, "sessions": count, "generated_per_run": bases[0]["generated"],
               "none_tok_s": [round(b["generated"] / b["wall_s"], 2) for b in bases]}
        row.update({mode: summary(runs[(workload, count, mode)], bases) for mode in modes[1:]})
        limit = configs["suffix"].speculative.num_draft_tokens if "suffix" in configs else 8
        totals = [echo_bound(history, generated, limit) for history, generated in bases[0]["histories"]]
        row["echo_bound_tokens_per_step"] = round(sum(t for t, _ in totals) / max(sum(s for _, s in totals), 1), 3)
        report.append(row)
    document = {
        "benchmark": "speculative",
        "model": loaded.model_id, "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."), "deterministic": args.deterministic,
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "rounds": args.rounds,
        "agent_new": args.agent_new, "chat_new": args.chat_new, "num_draft_tokens": {m: c.speculative.num_draft_tokens for m, c in configs.items() if m != "none"},
        "note": ("tok_s: generated tokens over wall time (prefill included) of all sessions, concurrent, greedy; "
                 "ratio: against no speculation in the same round (fresh runtime per run, modes in alternating "
                 "order); acceptance: accepted / drafted tokens; tokens_per_decode_row: tokens a session emits per "
                 "decode row (1 + accepted drafts); host_us_per_step: proposing, indexing and timing on the event "
                 "loop per planned step; echo_bound_tokens_per_step: tokens per decode step that drafting from each "
                 "session's own history could reach at best on the plain greedy streams, drafts capped as suffix's "
                 "(ops/bench/echo_bound.py)"),
        "results": report,
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.save}.json").write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
