"""The benchmark suite: kakeya over gRPC against transformers baselines measured in the same run.

Sections: multi-session decode (N concurrent sessions vs `generate` with the dynamic and the static
cache and `generate_batch`), one long session (turns of append + generate vs re-prefilling the
history every turn), and memory (server RSS and KV bytes sampled across the run). Writes NAME.json
and, when matplotlib is installed, NAME.png.

    python ops/bench/suite.py --device cpu --sessions 1 8 --new 64 --turns 60
    python ops/bench/suite.py --device cuda --out ops/bench/results/suite_h100_qwen3-0.6b_bf16
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import shlex
import sys
import tempfile

import torch
import transformers

from kakeya.client import DEFAULT_TOKENS_PER_MESSAGE

import suite_baselines as baselines
import suite_kakeya as kakeya
from suite_report import build_document, check_document, long_section, memory_section, multi_row

SECTIONS = ("multi", "long", "memory")
RUN_AHEAD_COUNTER = "kakeya_run_ahead_steps_total"
# Where a step's time goes: the scheduler's step, and with an engine process both sides of the boundary.
STEP_TIME_SERIES = tuple(f"kakeya_{name}_seconds_{part}" for name in (
    "scheduler_step_duration", "engine_step_duration", "engine_front_wait", "front_engine_wait")
    for part in ("sum", "count"))
CUDA_KV_BUDGET_BYTES = 16 * 1024**3  # room for 64 sessions of 256 tokens and one 19k-token session of Qwen3-0.6B


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", help="a .gguf file or model directory; default: the embedded model on cpu, "
                                         "a random-weight Qwen3-0.6B shape on cuda")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="default float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per session (multi)")
    parser.add_argument("--new", type=int, default=128, help="tokens generated per session (multi)")
    parser.add_argument("--turns", type=int, default=200, help="turns of the long session")
    parser.add_argument("--append", type=int, default=64, help="tokens appended per turn (long)")
    parser.add_argument("--generate", type=int, default=32, help="tokens generated per turn (long)")
    parser.add_argument("--baseline-turns", type=int, help="cap the re-prefill baseline's turns (default: --turns)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated subset of multi,long,memory")
    parser.add_argument("--baseline-timeout-s", type=float, default=900,
                        help="give up on a generate_batch call after this long (recorded as an error)")
    parser.add_argument("--skip-static", action="store_true", help="do not run the static-cache baseline")
    parser.add_argument("--tokens-per-message", type=int, default=DEFAULT_TOKENS_PER_MESSAGE,
                        help="the multi-session client's max_tokens_per_message (1: one message a token)")
    parser.add_argument("--min-tokens-per-message", type=int, default=1,
                        help="each multi-session generation's min_tokens_per_message (1: a message as soon as a "
                             "token is ready; K: tokens after the first go K a message)")
    parser.add_argument("--runtime-args", default="", help="extra `kakeya serve` flags, e.g. \"--no-deterministic\"")
    parser.add_argument("--sample-interval-s", type=float, default=0.5, help="memory sampling period")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the random prompt ids")
    parser.add_argument("--threads", type=int, help="torch CPU threads of the baseline process")
    parser.add_argument("--out", help="output path without extension (default ops/bench/results/suite_DEVICE_TIME)")
    args = parser.parse_args(argv)
    args.only = {part.strip() for part in args.only.split(",") if part.strip()}
    if not args.only or args.only - set(SECTIONS):
        parser.error(f"--only takes a comma-separated subset of {','.join(SECTIONS)}")
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out = pathlib.Path(args.out or f"ops/bench/results/suite_{args.device}_{stamp}")
    return args


def random_ids(rng: random.Random, count: int, length: int, vocab: int) -> list[list[int]]:
    # Ids away from both ends of the vocabulary, where special tokens usually live.
    return [[rng.randrange(100, vocab - 100) for _ in range(length)] for _ in range(count)]


def model_source(args: argparse.Namespace, scratch: pathlib.Path) -> tuple[str, str]:
    """(what the server and the baselines load, a description for the JSON)."""
    if args.model:
        return args.model, args.model
    if args.device == "cpu":
        from kakeya.runtime.engine.loader import embedded_model_path

        return str(embedded_model_path()), "embedded SmolLM2-135M-Instruct (GGUF)"
    directory = baselines.save_random_qwen3(scratch / "qwen3-0.6b-random", torch.device("cuda"),
                                            getattr(torch, args.dtype))
    return str(directory), "Qwen3-0.6B shape, random weights (seed 0), built from a config in code"


def run_multi(args, server, sampler, model, vocab: int, rng: random.Random) -> dict:
    static_warmups = 2 if args.device == "cuda" else 1  # compile, then graph capture, before timing
    rows = []
    # A baseline cut by its time limit goes on running in its thread with the model in its own
    # attention mode (continuous batching's paged one): every later baseline would measure that.
    stuck = False
    for n in args.sessions:
        prompts = random_ids(rng, n, args.prompt, vocab)
        print(f"[suite] multi N={n}: kakeya", file=sys.stderr, flush=True)
        sampler.phase = f"multi_kakeya_n{n}"
        before = kakeya.counter_values(server, RUN_AHEAD_COUNTER)
        times_before = step_times(server)
        measured = baselines.guarded(lambda: kakeya.multi_session(server.address, prompts, args.new,
                                                                  min(args.new, 8), args.tokens_per_message,
                                                                  args.min_tokens_per_message))
        after = kakeya.counter_values(server, RUN_AHEAD_COUNTER)
        if after:  # CUDA fast mode: launched-ahead decode steps the scheduler claimed or dropped
            measured["run_ahead_steps"] = {key: after[key] - before.get(key, 0.0) for key in after}
        measured["step_time_totals"] = {key: round(value - times_before.get(key, 0.0), 6)
                                        for key, value in step_times(server).items()}
        measured["gpu_busy_pct_mean"] = mean_gpu_busy(sampler.samples, f"multi_kakeya_n{n}")
        rows_by_name = {}
        for name, run in (
                ("generate_dynamic", lambda: baselines.generate_baseline(model, prompts, args.new, static=False,
                                                                         warmups=1)),
                ("generate_static", None if args.skip_static else
                 lambda: baselines.generate_baseline(model, prompts, args.new, static=True, warmups=static_warmups)),
                ("generate_batch", lambda: baselines.with_timeout(
                    lambda: baselines.generate_batch_baseline(model, prompts, args.new), args.baseline_timeout_s))):
            print(f"[suite] multi N={n}: {name}{' skipped' if run is None or stuck else ''}", file=sys.stderr,
                  flush=True)
            sampler.phase = f"multi_{name}_n{n}"
            if stuck:
                rows_by_name[name] = {"skipped": "an earlier baseline timed out and still runs on the model"}
                continue
            rows_by_name[name] = {"skipped": "--skip-static"} if run is None else baselines.guarded(run)
            stuck = str(rows_by_name[name].get("error", "")).startswith("TimeoutError")
            if args.device == "cuda":
                torch.cuda.empty_cache()
        rows.append(multi_row(n, measured, rows_by_name))
    return {"prompt_tokens": args.prompt, "new_tokens": args.new, "results": rows}


def step_times(server) -> dict[str, float]:
    """Sums and counts of the step-time histograms, unlabelled series only."""
    totals = {}
    for name in STEP_TIME_SERIES:
        value = kakeya.counter_values(server, name).get("")
        if value is not None:
            totals[name] = value
    return totals


def mean_gpu_busy(samples: list[dict], phase: str) -> float | None:
    """Mean of nvidia-smi's utilization.gpu (share of time a kernel ran) over a phase's samples."""
    values = [row["gpu_busy_pct"] for row in samples if row.get("phase") == phase and row.get("gpu_busy_pct") is not None]
    return round(sum(values) / len(values), 1) if values else None


def run_long(args, server, sampler, model, vocab: int, rng: random.Random) -> dict:
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    per_turn = args.append + args.generate
    turns, note = args.turns, ""
    if context and turns * per_turn > context:
        turns = context // per_turn
        note = f"--turns {args.turns} needs {args.turns * per_turn} tokens; the model's context is {context}: ran {turns}"
    chunks = random_ids(rng, turns, args.append, vocab)
    sampler.phase = "long_kakeya"

    measured = baselines.guarded(lambda: {"turns": kakeya.long_session(server.address, chunks, args.generate)})
    if "error" in measured:
        return {"error": measured["error"], "note": note}
    sampler.phase = "long_baseline"

    def progress(turn: int) -> None:
        if turn % kakeya.PROGRESS_EVERY == 0:
            print(f"[suite] long baseline: turn {turn}/{turns}", file=sys.stderr, flush=True)

    limit = min(turns, args.baseline_turns or turns)
    baseline = baselines.guarded(lambda: {"turns": baselines.reprefill_turns(model, chunks[:limit], args.generate, progress)})
    return long_section(measured["turns"], baseline.get("turns", baseline), args.append, args.generate, note)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rng = random.Random(args.seed)
    extra = shlex.split(args.runtime_args)
    if args.device == "cuda" and not any(arg.startswith("--kv-budget-bytes") for arg in extra):
        extra = ["--kv-budget-bytes", str(CUDA_KV_BUDGET_BYTES), *extra]
    sections: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="kakeya-suite-") as scratch:
        source, described = model_source(args, pathlib.Path(scratch))
        model = baselines.load_reference(source, device, dtype)
        vocab = model.get_input_embeddings().num_embeddings
        max_sessions = max(64, max(args.sessions) + 2)
        with kakeya.served(source, args.device, args.dtype, max_sessions, extra) as server:
            with kakeya.MemorySampler(server, args.sample_interval_s, device if device.type == "cuda" else None) \
                    as sampler:
                # Written after every section, so a run stopped by a time limit keeps what finished.
                if "multi" in args.only:
                    sections["multi_session"] = run_multi(args, server, sampler, model, vocab, rng)
                    write(args, described, None, sections, sampler.samples)
                if "long" in args.only:
                    sections["long_session"] = run_long(args, server, sampler, model, vocab, rng)
                    write(args, described, None, sections, sampler.samples)
                sampler.phase = "end"
            runtime = kakeya.runtime_snapshot(server.address)
    json_path, problems = write(args, described, runtime, sections, sampler.samples)
    try:
        import plot

        print(f"[suite] wrote {plot.render(json_path)}", file=sys.stderr)
    except ImportError as exc:  # matplotlib is imported by render: the `[bench]` extra is optional
        print(f"[suite] no plot ({exc}); later: python ops/bench/plot.py {json_path}", file=sys.stderr)
    return 1 if problems else 0


def write(args, described: str, runtime: dict | None, sections: dict, samples: list[dict]) -> tuple[pathlib.Path, list]:
    done = dict(sections)
    if "memory" in args.only:
        done["memory"] = memory_section(list(samples), baseline_cuda_peaks(sections.get("multi_session")))
    document = build_document(meta(args, described, runtime), done)
    problems = check_document(document)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.out.parent / f"{args.out.name}.json"  # not with_suffix: names like qwen3-0.6b hold dots
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"[suite] wrote {json_path}" + (f" (problems: {problems})" if problems else ""), file=sys.stderr)
    return json_path, problems


def baseline_cuda_peaks(multi: dict | None) -> dict[str, int]:
    """Peak CUDA memory of each baseline's timed call (peaks are reset before each), by name and N."""
    return {f"{name}_n{row['sessions']}": baseline["cuda_max_allocated_bytes"]
            for row in (multi or {}).get("results", [])
            for name, baseline in row["baselines"].items() if "cuda_max_allocated_bytes" in baseline}


def meta(args: argparse.Namespace, described: str, runtime: dict) -> dict:
    return {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(part) for part in sys.argv),
        "model": described, "device": args.device, "dtype": args.dtype,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "baseline_torch_threads": torch.get_num_threads(), "seed": args.seed,
        "runtime_args": args.runtime_args, "tokens_per_message": args.tokens_per_message,
        "min_tokens_per_message": args.min_tokens_per_message, "runtime": runtime or "not yet read: the run is in progress",
        "notes": {
            "kakeya": "timed in the client per stream (perf_counter at each token received over gRPC on a unix "
                      "socket), so RPC and client costs are included; TTFT includes the 128-token prefill, which "
                      "is lazy (the timed Generate does it); with min_tokens_per_message K > 1 the tokens of "
                      "a message arrive together, so ITL p50 is ~0 and ITL p99 is how long a message waits",
            "baselines": "in-process wall time of one call after warm-up runs of the same shapes; generate cannot "
                         "stream tokens cheaply, so baselines report aggregate tok_s and step_ms = wall / new "
                         "tokens (prefill amortised), no per-token latency; generate_batch ITL, when present, "
                         "comes from transformers' own per-token timestamps",
            "ratios": "ratio_vs_fastest_baseline = kakeya tok_s / best baseline tok_s at the same N; long session "
                      "ratios are latency(turn K) / latency(turn 1) at the last turn both sides ran",
            "eos": "sessions are created without EOS ids and generate uses min_new_tokens, so every stream "
                   "yields exactly the requested tokens",
        },
    }


if __name__ == "__main__":
    status = main()
    if baselines.abandoned_workers():
        # A timed-out baseline's thread still runs CUDA work; letting the interpreter finalise
        # under it aborts the process (C++ terminate) after the results are written.
        print("[suite] a timed-out baseline is still running; exiting without waiting for it", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
