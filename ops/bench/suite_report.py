"""Pure arithmetic and the JSON document of the benchmark suite: percentiles, per-stream latency
figures, ratios against the fastest baseline, and the document's shape. Imports nothing heavy,
so the unit tests run it without torch or a server."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

SCHEMA_VERSION = 1
SECTIONS = ("multi_session", "long_session", "memory")
BASELINE_NAMES = ("generate_dynamic", "generate_static", "generate_batch")


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def inter_token_gaps(stamps: Sequence[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(stamps)]


def stream_figures(started_s: float, streams: Sequence[Sequence[float]]) -> dict:
    """Client-side figures of N streams that all started at `started_s` (perf_counter seconds).

    Aggregate tok/s counts every token over the wall time to the last token. The decode phase
    starts when the last stream has its first token: from then on every stream is decoding, so
    decode tok/s is free of prefill. ITL pools the gaps of every stream.
    """
    tokens = sum(len(stamps) for stamps in streams)
    if not tokens or any(not stamps for stamps in streams):
        raise ValueError("every stream must have produced at least one token")
    ended = max(stamps[-1] for stamps in streams)
    decode_from = max(stamps[0] for stamps in streams)
    decode_tokens = sum(1 for stamps in streams for t in stamps if t > decode_from)
    ttfts = [stamps[0] - started_s for stamps in streams]
    gaps = [gap for stamps in streams for gap in inter_token_gaps(stamps)]
    return {
        "tokens": tokens,
        "wall_s": rounded(ended - started_s, 4),
        "tok_s": rounded(tokens / max(ended - started_s, 1e-9), 2),
        "decode_tok_s": rounded(decode_tokens / (ended - decode_from), 2) if ended > decode_from else None,
        "ttft_p50_s": rounded(percentile(ttfts, 50), 4),
        "ttft_p99_s": rounded(percentile(ttfts, 99), 4),
        "itl_p50_ms": rounded(scaled(percentile(gaps, 50), 1000), 3),
        "itl_p99_ms": rounded(scaled(percentile(gaps, 99), 1000), 3),
    }


def fastest_baseline(baselines: Mapping[str, Mapping]) -> tuple[str | None, float | None]:
    """The baseline with the highest tok/s among those that ran; skipped or failed ones carry none."""
    measured = {name: row["tok_s"] for name, row in baselines.items() if isinstance(row.get("tok_s"), (int, float))}
    if not measured:
        return None, None
    name = max(measured, key=measured.__getitem__)
    return name, measured[name]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def multi_row(sessions: int, kakeya: Mapping, baselines: Mapping[str, Mapping]) -> dict:
    """One N of the multi-session section, with kakeya's ratio to every baseline and to the fastest."""
    name, best = fastest_baseline(baselines)
    return {
        "sessions": sessions,
        "kakeya": dict(kakeya),
        "baselines": {key: dict(value) for key, value in baselines.items()},
        "fastest_baseline": name,
        "ratio_vs_fastest_baseline": ratio(kakeya.get("tok_s"), best),
        "ratio_vs_baseline": {key: ratio(kakeya.get("tok_s"), value.get("tok_s")) for key, value in baselines.items()},
    }


def turn_ratio(latencies_s: Sequence[float], turn: int) -> float | None:
    """latency of `turn` (1-based) over latency of turn 1; None when the run is shorter."""
    if turn < 1 or len(latencies_s) < turn:
        return None
    return ratio(latencies_s[turn - 1], latencies_s[0])


# One turn's latency moves by several ms between runs (host scheduling, collector pauses): turn 1
# alone read 49-58 ms over five H200 runs of the same code. The windowed ratio compares the median
# of the first WINDOW turns with that of the last WINDOW.
WINDOW_TURNS = 5


def window_ratio(latencies_s: Sequence[float], window: int = WINDOW_TURNS) -> float | None:
    """Median of the last `window` turns over the median of the first `window`; None when shorter."""
    if len(latencies_s) < 2 * window:
        return None
    return ratio(statistics.median(latencies_s[-window:]), statistics.median(latencies_s[:window]))


def long_section(kakeya_s: Sequence[float], baseline_s: Sequence[float] | Mapping, append_tokens: int,
                 generate_tokens: int, note: str = "") -> dict:
    """Per-turn latencies of both sides; ratios are taken at the last turn both sides ran, so they compare
    the same history lengths. A baseline that did not run is passed as a mapping with its reason."""
    baseline_list = list(baseline_s) if not isinstance(baseline_s, Mapping) else []
    common = min(len(kakeya_s), len(baseline_list)) if baseline_list else len(kakeya_s)
    section = {
        "append_tokens": append_tokens,
        "generate_tokens": generate_tokens,
        "kakeya_turns": len(kakeya_s),
        "baseline_turns": len(baseline_list),
        "compared_turn": common,
        "kakeya": {"turn_latency_s": [rounded(x, 4) for x in kakeya_s],
                   "last_over_first": turn_ratio(kakeya_s, common),
                   "full_run_last_over_first": turn_ratio(kakeya_s, len(kakeya_s)),
                   f"full_run_median{WINDOW_TURNS}_last_over_first": window_ratio(kakeya_s)},
        "baseline_reprefill": ({"turn_latency_s": [rounded(x, 4) for x in baseline_list],
                                "last_over_first": turn_ratio(baseline_list, common)}
                               if baseline_list else dict(baseline_s) if isinstance(baseline_s, Mapping)
                               else {"skipped": "no turns ran"}),
    }
    section["kakeya_speedup_at_compared_turn"] = (
        ratio(baseline_list[common - 1], kakeya_s[common - 1]) if baseline_list and common else None)
    if note:
        section["note"] = note
    return section


def memory_section(samples: Sequence[Mapping], baseline_cuda_peaks: Mapping[str, int] | None = None) -> dict:
    """Samples over the run plus the peaks of each series."""
    keys = sorted({key for sample in samples for key, value in sample.items()
                   if key not in ("t_s", "phase") and isinstance(value, (int, float))})
    peaks = {key: max(s[key] for s in samples if isinstance(s.get(key), (int, float))) for key in keys}
    return {"samples": [dict(s) for s in samples], "peaks": peaks,
            "baseline_cuda_max_allocated_bytes": dict(baseline_cuda_peaks or {})}


def build_document(meta: Mapping, sections: Mapping[str, object]) -> dict:
    """The suite's JSON: run metadata first, then whichever sections ran (others say they were not asked for)."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections: {sorted(unknown)}")
    document = {"benchmark": "suite", "schema_version": SCHEMA_VERSION, **meta}
    for name in SECTIONS:
        document[name] = sections.get(name, {"skipped": "not selected with --only"})
    return document


def check_document(document: Mapping) -> list[str]:
    """What a plot or a reader would trip over; an empty list means the document is well formed."""
    problems = [f"missing {key}" for key in ("benchmark", "schema_version", *SECTIONS) if key not in document]
    multi = document.get("multi_session", {})
    for row in multi.get("results", []) if isinstance(multi, Mapping) else []:
        for key in ("sessions", "kakeya", "baselines", "fastest_baseline", "ratio_vs_fastest_baseline"):
            if key not in row:
                problems.append(f"multi_session row without {key}")
        for name, baseline in row.get("baselines", {}).items():
            if not ({"tok_s", "skipped", "error"} & set(baseline)):
                problems.append(f"baseline {name} at N={row.get('sessions')} has neither tok_s, skipped nor error")
    return problems


def scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
