"""How much of a decode step the GPU idles: `kakeya serve` runs in this process (engine in the same
process, so the profiler sees its kernels) under torch's profiler with CUDA activity only (no host
op recording, which would slow the host side it is meant to expose), while a client process streams
N concurrent sessions. From the kernel and copy intervals of the steady decode window (the middle of
the GPU's activity, past prefill and before the last streams end) it reports the share of wall time
the GPU was busy, the gaps between launches, and per-step figures where a marker kernel runs once a
step. Prints one JSON document; `--variants` times server flags one after the other (each variant
is flag names without their dashes, space-separated; `default` is none), interleaved `--rounds`
times, each in a fresh child process.

    python ops/bench/gpu_timeline.py --model DIR --sessions 1 64 --variants default no-cuda-run-ahead
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
WINDOW = (0.3, 0.9)  # the steady decode part of the GPU's active span


def busy_figures(intervals: list[tuple[float, float]], names: list[str], marker: str | None) -> dict:
    """Union of GPU intervals (µs) inside the steady window, gaps between them, steps by marker."""
    if not intervals:
        return {"error": "no GPU activity was recorded (no CUDA device, or the profiler saw none)"}
    order = sorted(range(len(intervals)), key=lambda i: intervals[i][0])
    spans = [intervals[i] for i in order]
    start, end = spans[0][0], max(e for _, e in spans)
    lo, hi = start + WINDOW[0] * (end - start), start + WINDOW[1] * (end - start)
    busy, gaps, cursor, last_end = 0.0, [], lo, None
    for s, e in spans:
        s, e = max(s, lo), min(e, hi)
        if e <= s:
            continue
        if last_end is not None and s > last_end:
            gaps.append(s - last_end)
        busy += max(0.0, e - max(s, cursor))
        cursor = max(cursor, e)
        last_end = e if last_end is None else max(last_end, e)
    window = hi - lo
    figures = {"window_ms": round(window / 1e3, 2), "gpu_busy_share": round(busy / window, 4),
               "gpu_idle_share": round(1 - busy / window, 4), "gaps": len(gaps),
               "gap_p50_us": round(statistics.median(gaps), 2) if gaps else 0.0,
               "gaps_over_20us_ms": round(sum(g for g in gaps if g > 20) / 1e3, 3)}
    if marker:
        steps = sum(1 for (s, _), n in zip(intervals, names) if lo <= s < hi and marker.lower() in n.lower())
        if steps:
            figures.update(steps=steps, step_ms=round(window / steps / 1e3, 4),
                           gpu_busy_per_step_ms=round(busy / steps / 1e3, 4))
    return figures


def top_kernels(intervals, names, count: int = 12) -> list[dict]:
    total: dict[str, float] = {}
    for (s, e), n in zip(intervals, names):
        total[n] = total.get(n, 0.0) + (e - s)
    return [{"name": n[:90], "ms": round(t / 1e3, 3)} for n, t in sorted(total.items(), key=lambda kv: -kv[1])[:count]]


def profiled_child(args: argparse.Namespace) -> None:
    """Runs the server here, drives it from a client process, prints the figures of one variant."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from suite_kakeya import multi_session, wait_ready
    from kakeya.runtime.server import cli

    tmp = tempfile.mkdtemp(prefix="kakeya-timeline-")
    address = f"unix:{os.path.join(tmp, 'kakeya.sock')}"
    argv = ["serve", "--unix-socket", address[5:], "--model", args.model, "--device", args.device, "--dtype", args.dtype,
            "--log-level", "warning", "--metrics-port", "-1", "--max-sessions", str(max(args.sessions)),
            "--engine-process", "off", *variant_flags(args.variant)]
    results: dict = {}

    def drive() -> None:
        try:
            wait_ready(address, _Alive())
            prompts_for = {n: [[(7 + 13 * i + 31 * s) % 900 + 5 for i in range(args.prompt)] for s in range(n)]
                           for n in args.sessions}
            for n in args.sessions:
                multi_session(address, prompts_for[n], 16, 8, 1)  # warm-up: graphs for this batch
                if torch.cuda.is_available():
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        streams = multi_session(address, prompts_for[n], args.new, 8, 1)
                    events = prof.events()
                else:  # the plumbing alone
                    streams, events = multi_session(address, prompts_for[n], args.new, 8, 1), []
                intervals, names = [], []
                for event in events:
                    if event.device_type == torch.autograd.DeviceType.CUDA and event.time_range.elapsed_us() > 0:
                        intervals.append((event.time_range.start, event.time_range.end))
                        names.append(event.name)
                results[str(n)] = {"tok_s": streams.get("tok_s"), "itl_p50_ms": streams.get("itl_p50_ms"),
                                   **busy_figures(intervals, names, args.marker),
                                   "top_kernels": top_kernels(intervals, names)}
        except BaseException as exc:  # reported, then the server is stopped all the same
            results["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            os.kill(os.getpid(), 2)

    threading.Thread(target=drive, daemon=True).start()
    cli.main(argv)
    print(json.dumps(results))


def variant_flags(variant: str) -> list[str]:
    return [] if variant == "default" else [f"--{word}" for word in shlex.split(variant)]


class _Alive:
    """wait_ready's process stand-in: the server runs in this very process."""

    returncode = None

    def poll(self):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda", help="cpu only checks the plumbing: it records no GPU activity")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--variants", nargs="+", default=["default", "no-cuda-run-ahead"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--marker", default="argmax", help="a kernel name part that runs once a decode step")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        profiled_child(args)
        return
    runs = []
    for round_index in range(args.rounds):
        order = args.variants if round_index % 2 == 0 else list(reversed(args.variants))
        for variant in order:
            command = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--dtype", args.dtype,
                       "--device", args.device,
                       "--prompt", str(args.prompt), "--new", str(args.new), "--marker", args.marker,
                       "--sessions", *map(str, args.sessions), f"--variant={variant}"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            figures = json.loads(lines[-1]) if lines else {"error": done.stderr.strip()[-1500:]}
            print(json.dumps({"round": round_index, "variant": variant, **figures}), file=sys.stderr, flush=True)
            runs.append({"round": round_index, "variant": variant, "figures": figures})
    import torch

    print(json.dumps({"benchmark": "gpu_timeline", "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                      else None, "model": args.model, "dtype": args.dtype, "new_tokens": args.new,
                      "window": WINDOW, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
