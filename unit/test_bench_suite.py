"""The benchmark suite's arithmetic and JSON shape (ops/bench/suite_report.py): no model, no server."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "ops" / "bench"))

import suite_report as report


def test_percentile_interpolates_between_ranks():
    values = list(range(1, 101))
    assert report.percentile(values, 50) == pytest.approx(50.5)
    assert report.percentile(values, 99) == pytest.approx(99.01)
    assert report.percentile(values, 0) == 1 and report.percentile(values, 100) == 100
    assert report.percentile([7.0], 99) == 7.0
    assert report.percentile([], 50) is None
    assert report.percentile(reversed(values), 50) == pytest.approx(50.5)  # order of arrival does not matter
    with pytest.raises(ValueError):
        report.percentile(values, 101)


def test_stream_figures_separate_prefill_from_decode():
    # Two streams started at t=0; the second one's first token (t=1.5) opens the decode phase.
    figures = report.stream_figures(0.0, [[1.0, 2.0, 3.0], [1.5, 2.5, 3.5]])
    assert figures["tokens"] == 6
    assert figures["wall_s"] == 3.5
    assert figures["tok_s"] == pytest.approx(6 / 3.5, abs=0.01)
    assert figures["decode_tok_s"] == pytest.approx(4 / 2.0)
    assert figures["ttft_p50_s"] == pytest.approx(1.25)
    assert figures["itl_p50_ms"] == pytest.approx(1000.0) and figures["itl_p99_ms"] == pytest.approx(1000.0)


def test_stream_figures_refuse_an_empty_stream():
    with pytest.raises(ValueError):
        report.stream_figures(0.0, [[1.0], []])


def test_single_token_streams_have_no_decode_phase_or_gaps():
    figures = report.stream_figures(0.0, [[0.5]])
    assert figures["decode_tok_s"] is None and figures["itl_p50_ms"] is None


def test_fastest_baseline_ignores_skipped_and_failed():
    baselines = {"generate_dynamic": {"tok_s": 100.0}, "generate_static": {"skipped": "--skip-static"},
                 "generate_batch": {"error": "RuntimeError: boom"}}
    assert report.fastest_baseline(baselines) == ("generate_dynamic", 100.0)
    assert report.fastest_baseline({"generate_batch": {"error": "x"}}) == (None, None)


def test_multi_row_ratios():
    row = report.multi_row(64, {"tok_s": 300.0},
                           {"generate_dynamic": {"tok_s": 100.0}, "generate_static": {"tok_s": 200.0},
                            "generate_batch": {"error": "x"}})
    assert row["fastest_baseline"] == "generate_static"
    assert row["ratio_vs_fastest_baseline"] == 1.5
    assert row["ratio_vs_baseline"] == {"generate_dynamic": 3.0, "generate_static": 1.5, "generate_batch": None}
    failed = report.multi_row(8, {"error": "boom"}, {"generate_dynamic": {"tok_s": 100.0}})
    assert failed["ratio_vs_fastest_baseline"] is None


def test_long_section_compares_the_same_turns():
    kakeya = [1.0, 1.1, 1.2, 1.3, 1.4]
    baseline = [2.0, 4.0, 8.0]  # capped at three turns
    section = report.long_section(kakeya, baseline, 64, 32)
    assert section["compared_turn"] == 3
    assert section["kakeya"]["last_over_first"] == pytest.approx(1.2)
    assert section["kakeya"]["full_run_last_over_first"] == pytest.approx(1.4)
    assert section["baseline_reprefill"]["last_over_first"] == pytest.approx(4.0)
    assert section["kakeya_speedup_at_compared_turn"] == pytest.approx(8.0 / 1.2, abs=1e-3)


def test_long_section_records_a_failed_baseline():
    section = report.long_section([1.0, 2.0], {"error": "OutOfMemoryError: ..."}, 64, 32, note="capped")
    assert section["baseline_reprefill"] == {"error": "OutOfMemoryError: ..."}
    assert section["compared_turn"] == 2 and section["kakeya"]["last_over_first"] == 2.0
    assert section["kakeya_speedup_at_compared_turn"] is None and section["note"] == "capped"


def test_window_ratio_takes_medians_of_both_ends():
    latencies = [5.0, 1.0, 1.0, 1.0, 1.0] + [9.0] * 10 + [2.0, 2.0, 2.0, 9.0, 2.0]
    assert report.window_ratio(latencies) == 2.0  # one slow turn at either end does not move it
    assert report.window_ratio([1.0] * 9) is None
    assert report.long_section(latencies, [], 64, 32)["kakeya"]["full_run_median5_last_over_first"] == 2.0


def test_turn_ratio_bounds():
    assert report.turn_ratio([1.0, 3.0], 2) == 3.0
    assert report.turn_ratio([1.0], 2) is None and report.turn_ratio([1.0], 0) is None


def test_memory_section_peaks():
    samples = [{"t_s": 0.0, "phase": "a", "server_rss_bytes": 10, "kv_used_bytes": 0},
               {"t_s": 0.5, "phase": "b", "server_rss_bytes": 30, "kv_used_bytes": 5, "bench_rss_bytes": None}]
    section = report.memory_section(samples)
    assert section["peaks"] == {"server_rss_bytes": 30, "kv_used_bytes": 5}
    assert len(section["samples"]) == 2 and section["baseline_cuda_max_allocated_bytes"] == {}


def test_document_is_json_and_well_formed():
    row = report.multi_row(1, {"tok_s": 10.0}, {"generate_dynamic": {"tok_s": 5.0}})
    document = report.build_document({"device": "cpu"}, {"multi_session": {"results": [row]}})
    assert document["schema_version"] == report.SCHEMA_VERSION
    assert document["long_session"] == {"skipped": "not selected with --only"}
    assert report.check_document(json.loads(json.dumps(document))) == []


def test_check_document_flags_a_baseline_without_outcome():
    row = report.multi_row(1, {"tok_s": 10.0}, {"generate_batch": {"wall_s": 1.0}})
    document = report.build_document({}, {"multi_session": {"results": [row]}})
    assert report.check_document(document) == ["baseline generate_batch at N=1 has neither tok_s, skipped nor error"]
    with pytest.raises(ValueError):
        report.build_document({}, {"throughput": {}})
