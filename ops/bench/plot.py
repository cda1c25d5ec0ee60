"""Draws a benchmark-suite JSON as one PNG: throughput and inter-token latency against the number of
sessions, per-turn latency of the long session, and memory over the run. Needs matplotlib (the
`[bench]` extra).

    python ops/bench/plot.py ops/bench/results/NAME.json        # writes NAME.png beside it
"""

from __future__ import annotations

import json
import pathlib
import sys

GIB = 1024**3


def render(json_path: str | pathlib.Path, png_path: str | pathlib.Path | None = None) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on benchmark machines
    import matplotlib.pyplot as plt

    json_path = pathlib.Path(json_path)
    png_path = pathlib.Path(png_path) if png_path else json_path.with_suffix(".png")
    document = json.loads(json_path.read_text())
    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    figure.suptitle(f"{document.get('model', '?')} · {document.get('device_name', document.get('device', '?'))} · "
                    f"{document.get('dtype', '?')}", fontsize=11)
    throughput(axes[0][0], document.get("multi_session", {}))
    latency(axes[0][1], document.get("multi_session", {}))
    long_turns(axes[1][0], document.get("long_session", {}))
    memory(axes[1][1], document.get("memory", {}))
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return png_path


def _rows(section: dict) -> list[dict]:
    return section.get("results", []) if isinstance(section, dict) else []


def _empty(axis, title: str, section: dict) -> None:
    reason = section.get("skipped") or section.get("error") or "no data"
    axis.set_title(title)
    axis.text(0.5, 0.5, str(reason)[:120], ha="center", va="center", wrap=True, transform=axis.transAxes)
    axis.set_axis_off()


def _label(axis, title: str, xlabel: str, ylabel: str, grid: str = "major") -> None:
    """Titles, grid and legend, alike on every panel; `grid="both"` adds minor lines for log axes."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(True, which=grid, alpha=0.3)
    axis.legend(fontsize=8)


def throughput(axis, section: dict) -> None:
    rows = _rows(section)
    if not rows:
        return _empty(axis, "aggregate tok/s", section)
    series = {"kakeya": [(r["sessions"], r["kakeya"].get("tok_s")) for r in rows]}
    for row in rows:
        for name, baseline in row["baselines"].items():
            series.setdefault(name, []).append((row["sessions"], baseline.get("tok_s")))
    for name, points in series.items():
        points = [(n, v) for n, v in points if v is not None]
        if points:
            axis.plot(*zip(*points), marker="o", linewidth=2.5 if name == "kakeya" else 1.2, label=name)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    _label(axis, f"multi-session: prompt {section.get('prompt_tokens')}, {section.get('new_tokens')} new",
           "concurrent sessions N", "generated tok/s (all sessions)", grid="both")


def latency(axis, section: dict) -> None:
    rows = _rows(section)
    if not rows:
        return _empty(axis, "inter-token latency", section)
    sources = [("kakeya", lambda r: r["kakeya"]), ("generate_batch", lambda r: r["baselines"].get("generate_batch", {}))]
    for name, pick in sources:
        for quantile, style in (("p50", "-"), ("p99", "--")):
            points = [(r["sessions"], pick(r).get(f"itl_{quantile}_ms")) for r in rows]
            points = [(n, v) for n, v in points if v is not None]
            if points:
                axis.plot(*zip(*points), style, marker="o", label=f"{name} ITL {quantile}")
    axis.set_xscale("log", base=2)
    _label(axis, "inter-token latency (generate: not measurable per token)", "concurrent sessions N",
           "ms between tokens of one stream")


def long_turns(axis, section: dict) -> None:
    kakeya = section.get("kakeya", {}).get("turn_latency_s") if isinstance(section, dict) else None
    if not kakeya:
        return _empty(axis, "long session", section)
    axis.plot(range(1, len(kakeya) + 1), kakeya, label=f"kakeya (last/first {section['kakeya'].get('last_over_first')}, "
              f"medians of 5 {section['kakeya'].get('full_run_median5_last_over_first')})")
    baseline = section.get("baseline_reprefill", {})
    if baseline.get("turn_latency_s"):
        turns = baseline["turn_latency_s"]
        axis.plot(range(1, len(turns) + 1), turns,
                  label=f"generate re-prefill (last/first {baseline.get('last_over_first')})")
    elif baseline:
        axis.text(0.02, 0.9, f"baseline: {baseline.get('error') or baseline.get('skipped')}"[:100],
                  transform=axis.transAxes, fontsize=8)
    axis.set_yscale("log")
    _label(axis, f"long session: append {section.get('append_tokens')}, generate {section.get('generate_tokens')}",
           "turn", "seconds per turn", grid="both")


def memory(axis, section: dict) -> None:
    samples = section.get("samples") if isinstance(section, dict) else None
    if not samples:
        return _empty(axis, "memory", section)
    times = [s["t_s"] for s in samples]
    for key, label in (("server_rss_bytes", "server RSS"), ("kv_used_bytes", "server KV in use"),
                       ("bench_rss_bytes", "baseline process RSS"),
                       ("bench_cuda_allocated_bytes", "baseline process CUDA allocated")):
        points = [(t, s[key] / GIB) for t, s in zip(times, samples) if isinstance(s.get(key), (int, float))]
        if points:
            axis.plot(*zip(*points), label=label)
    # Phase boundaries, so a rise can be read against what was running.
    previous = None
    for t, sample in zip(times, samples):
        if sample.get("phase") != previous:
            axis.axvline(t, color="grey", alpha=0.2, linewidth=0.8)
            previous = sample.get("phase")
    _label(axis, "memory across the run (grey lines: phase changes)", "seconds since the server was ready", "GiB")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python ops/bench/plot.py NAME.json [OUT.png]")
    print(render(*sys.argv[1:]))
