"""The transformers side of the benchmark suite: the models it measures, and the baselines run in the
suite's own process — `generate` with the dynamic and the static cache, continuous batching
(`generate_batch`), and re-prefilling a whole history every turn."""

from __future__ import annotations

import inspect
import pathlib
import threading
import time
from collections.abc import Callable

import torch

from suite_report import inter_token_gaps, percentile

# Qwen3-0.6B's published shape. Throughput depends only on shapes, so random weights measure the
# same work where no weights can be downloaded.
QWEN3_0_6B_SHAPE = dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
    rms_norm_eps=1e-6, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
)


def sync(device: torch.device) -> None:
    """Timings on CUDA must wait for queued kernels, or they measure only the launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def save_random_qwen3(directory: pathlib.Path, device: torch.device, dtype: torch.dtype) -> pathlib.Path:
    """Writes a Qwen3-0.6B-shaped model with random weights (no tokenizer: the runtime takes ids)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    # Initialising on the target device is much faster than 600M random draws on the host.
    with torch.device(device):
        model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_0_6B_SHAPE))
    model.to(dtype).save_pretrained(directory)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return directory


def load_reference(source: str, device: torch.device, dtype: torch.dtype):
    """The same weights the runtime serves, on transformers' own sdpa attention."""
    from transformers import AutoModelForCausalLM

    path = pathlib.Path(source)
    kwargs = {"dtype": dtype, "attn_implementation": "sdpa"}
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    return model.to(device).eval()


def guarded(run: Callable[[], dict]) -> dict:
    """A baseline that raises is recorded with its error; the rest of the suite goes on."""
    try:
        return run()
    except Exception as exc:  # any failure of a third-party API is a result to report, not a crash
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def _generate(model, ids: torch.Tensor, new_tokens: int, **options) -> torch.Tensor:
    with torch.inference_mode():
        # min_new_tokens masks EOS, so every row yields exactly new_tokens whatever the weights.
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **options)


def _timed(device: torch.device, run: Callable[[], object]) -> tuple[float, object]:
    sync(device)
    started = time.perf_counter()
    result = run()
    sync(device)
    return time.perf_counter() - started, result


def generate_baseline(model, prompts: list[list[int]], new_tokens: int, *, static: bool, warmups: int) -> dict:
    """`generate` on the whole batch of N. With the static cache transformers compiles the forward on
    CUDA; warm-ups use the same shapes as the timed run, so compilation and graph capture stay out of it."""
    device = model.device
    ids = torch.tensor(prompts, device=device)
    options = {"cache_implementation": "static"} if static else {}
    for _ in range(warmups):
        _generate(model, ids, new_tokens, **options)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall_s, output = _timed(device, lambda: _generate(model, ids, new_tokens, **options))
    tokens = (output.shape[1] - ids.shape[1]) * ids.shape[0]
    row = {"tok_s": round(tokens / wall_s, 2), "wall_s": round(wall_s, 4), "tokens": int(tokens),
           "step_ms": round(wall_s / new_tokens * 1000, 3)}
    if static:
        row["compiled"] = _valid_compile(model)
    if device.type == "cuda":
        row["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return row


def _valid_compile(model) -> bool:
    # transformers auto-compiles a static-cache generate only on accelerators (see its
    # _valid_auto_compile_criteria); on CPU the static cache runs eagerly.
    return model.device.type in ("cuda", "xpu")


def generate_batch_baseline(model, prompts: list[list[int]], new_tokens: int) -> dict:
    """transformers continuous batching. The API moved between 5.x releases, so only the keyword
    arguments the installed signature accepts are passed. A first call of the same workload builds
    and warms the manager (graph capture, compile); when the manager can be kept, the timed call
    reuses it, otherwise the timed call includes building it and the row says so."""
    from transformers import GenerationConfig

    if not hasattr(model, "generate_batch"):
        return {"error": "this transformers version has no generate_batch"}
    device = model.device
    accepted = inspect.signature(model.generate_batch).parameters
    # eos None: the manager disables EOS, so every request runs to max_new_tokens.
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    wanted = {"progress_bar": False, "record_timestamps": True}
    # Keeping the warmed manager for the timed call hung on CPU with a capped cache (the warm-up's
    # blocks seemed never to come back), so on CPU every call builds its own.
    keep = (device.type != "cpu" and "persistent_manager" in accepted
            and hasattr(model, "destroy_cached_continuous_batching_manager"))
    if keep:
        wanted["persistent_manager"] = True
    cb_config = _host_memory_cap() if device.type == "cpu" and "continuous_batching_config" in accepted else None
    if cb_config is not None:
        wanted["continuous_batching_config"] = cb_config
    options = {key: value for key, value in wanted.items() if key in accepted}
    try:
        model.generate_batch(inputs=prompts, generation_config=config, **options)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        wall_s, outputs = _timed(device, lambda: model.generate_batch(inputs=prompts, generation_config=config,
                                                                         **options))
    finally:
        if keep:
            model.destroy_cached_continuous_batching_manager()
        model.set_attn_implementation("sdpa")
    results = list(outputs.values())
    tokens = sum(len(r.generated_tokens) for r in results)
    failed = [r.error for r in results if getattr(r, "error", None)]
    row = {"tok_s": round(tokens / wall_s, 2), "wall_s": round(wall_s, 4), "tokens": tokens,
           "step_ms": round(wall_s / new_tokens * 1000, 3), "requests_returned": len(results),
           "timing_includes_manager_setup": not keep,
           "host_memory_capped": "continuous_batching_config" in options}
    if failed or len(results) != len(prompts):
        row["request_errors"] = failed[:5] or [f"{len(prompts) - len(results)} requests missing"]
    gaps = [gap for r in results for gap in inter_token_gaps(r.timestamps or [])]
    if gaps:
        # Per-token timestamps taken inside the manager's loop: in-process, not what a client would see.
        row["itl_p50_ms"] = round(percentile(gaps, 50) * 1000, 3)
        row["itl_p99_ms"] = round(percentile(gaps, 99) * 1000, 3)
    if device.type == "cuda":
        row["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return row


_ABANDONED: list[threading.Thread] = []


def abandoned_workers() -> list[threading.Thread]:
    """with_timeout's workers that were given up on and still run."""
    return [worker for worker in _ABANDONED if worker.is_alive()]


def with_timeout(run: Callable[[], dict], timeout_s: float) -> dict:
    """Runs a baseline in a worker thread and gives up after `timeout_s`: a third-party loop that
    never finishes must not hang the suite. A stuck worker is left behind (threads cannot be killed)."""
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(guarded(run)), name="baseline", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        _ABANDONED.append(worker)
        return {"error": f"TimeoutError: no result after {timeout_s:.0f} s; its thread was left running"}
    return outcome


def _host_memory_cap():
    """On CPU the manager sizes its paged cache from free host memory (11 GiB for two 136-token
    requests on a 23 GiB machine); a small share is plenty for the benchmark's requests."""
    try:
        from transformers import ContinuousBatchingConfig

        return ContinuousBatchingConfig(max_memory_percent=0.05)
    except (ImportError, TypeError):
        return None


def reprefill_turns(model, chunks: list[list[int]], generate_tokens: int, on_turn: Callable[[int], None]) -> list[float]:
    """Seconds per turn when every turn re-runs `generate` on the whole history (no cache kept between
    turns), which is what a stateless server does for one long conversation."""
    device = model.device
    history: list[int] = []
    warm = torch.tensor([chunks[0]], device=device)
    _generate(model, warm, 2)
    latencies = []
    for turn, chunk in enumerate(chunks, start=1):
        history.extend(chunk)
        ids = torch.tensor([history], device=device)
        wall_s, output = _timed(device, lambda: _generate(model, ids, generate_tokens))
        history.extend(output[0, ids.shape[1]:].tolist())
        latencies.append(wall_s)
        on_turn(turn)
    return latencies
