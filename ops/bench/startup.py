"""Start-up of `kakeya serve`: with the converted-model cache against without it, interleaved.

Each round starts the server twice on the same GGUF model: once with `--model-cache-dir none`
(transformers converts the file, as every start did before the cache) and once on a cache the
benchmark filled beforehand (one untimed start). Times, from the process's start: the model loaded
(its `model_loaded` log line) and the server ready (`server_ready`, after warm-up). With
--engine-process on, the model is loaded in the engine process, which the front waits for. Prints
one JSON document (`--save` also writes ops/bench/results/NAME.json).

    python ops/bench/startup.py --rounds 5 --save startup_cpu_smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

READY_TIMEOUT_S = 600
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def start_once(model: str | None, device: str, cache_dir: str, extra: list[str]) -> dict:
    """Seconds from the process's start to model_loaded and to server_ready; the process is then
    stopped."""
    command = [sys.executable, "-m", "kakeya.runtime.server.cli", "serve", "--port", "0", "--metrics-port", "-1",
               "--device", device, "--log-format", "json", "--model-cache-dir", cache_dir, *extra]
    if model:
        command += ["--model", model]
    env = {k: v for k, v in os.environ.items() if k != "KAKEYA_MODEL_CACHE_DIR"}
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    times: dict[str, float] = {}
    try:
        for line in process.stderr:
            try:
                event = json.loads(line).get("event")
            except (ValueError, AttributeError):
                continue
            if event in ("model_loaded", "model_cache_hit", "server_ready"):
                times.setdefault(event, time.monotonic() - started)
            if event == "server_ready" or time.monotonic() - started > READY_TIMEOUT_S:
                break
    finally:
        process.terminate()
        process.wait(60)
    if "server_ready" not in times:
        raise RuntimeError(f"kakeya serve was not ready: {' '.join(command)}")
    return {"model_loaded_s": round(times["model_loaded"], 3), "ready_s": round(times["server_ready"], 3),
            "cache_hit": "model_cache_hit" in times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a .gguf file (default: the embedded SmolLM2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engine-process", default="off", choices=("on", "off"))
    parser.add_argument("--save", default=None, metavar="NAME", help="also write ops/bench/results/NAME.json")
    args = parser.parse_args()
    extra = ["--engine-process", args.engine_process]
    runs: dict[str, list[dict]] = {"converted": [], "cached": []}
    with tempfile.TemporaryDirectory(prefix="kakeya-startup-") as cache:
        start_once(args.model, args.device, cache, extra)  # fills the cache
        for index in range(args.rounds):
            for name in (("converted", "cached") if index % 2 == 0 else ("cached", "converted")):
                runs[name].append(start_once(args.model, args.device, "none" if name == "converted" else cache, extra))
        cache_bytes = sum(f.stat().st_size for f in pathlib.Path(cache).rglob("*") if f.is_file())
    medians = {name: {key: statistics.median(r[key] for r in rs) for key in ("model_loaded_s", "ready_s")}
               for name, rs in runs.items()}
    result = {"benchmark": "startup", "model": args.model or "embedded SmolLM2-135M-Instruct Q4_1 GGUF",
              "device": args.device, "engine_process": args.engine_process, "machine": platform.machine(),
              "cpus": os.cpu_count(), "rounds": args.rounds, "cache_bytes": cache_bytes, "runs": runs,
              "median": medians,
              "speedup_ready": round(medians["converted"]["ready_s"] / medians["cached"]["ready_s"], 2),
              "speedup_model_loaded": round(medians["converted"]["model_loaded_s"] / medians["cached"]["model_loaded_s"], 2)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.save:
        (RESULTS / f"{args.save}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
