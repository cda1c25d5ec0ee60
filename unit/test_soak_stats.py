"""The soak runner's RSS statistics (ops/soak/soak_rss.py): a saw-tooth is not a leak, a leak is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops" / "soak"))

import soak_rss  # noqa: E402


def _samples(rss_of_request) -> list[tuple[int, float]]:
    return [(requests, rss_of_request(requests)) for requests in range(1000, 2000, 100)]


def test_a_saw_tooth_without_a_leak_keeps_its_floor():
    # Climbs 10 MiB per sample, drops 40 MiB every 5 samples, ending on a tooth's top.
    points = _samples(lambda r: 1500 + 10 * ((r // 100) % 5))
    points[-1] = (points[-1][0], 1540.0)
    assert soak_rss.slope_per_1000(points) > 20  # what made a short run look like a leak
    assert soak_rss.floor_rise_per_1000(points) == pytest.approx(0.0)


def test_a_leak_lifts_the_floor_at_its_rate():
    points = _samples(lambda r: 1500 + 0.03 * r + 10 * ((r // 100) % 5))  # 30 MiB per 1,000 requests
    assert soak_rss.floor_rise_per_1000(points) == pytest.approx(30.0, rel=0.2)


def test_too_few_samples_give_no_figure():
    assert soak_rss.floor_rise_per_1000([(100, 1.0), (200, 2.0), (300, 3.0)]) is None
