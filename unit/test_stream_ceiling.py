"""ops/bench/stream_ceiling.py runs end to end at a small size: every stream's tokens arrive,
however many a message (the script fails on a short count), and it prints its one JSON document."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "ops" / "bench" / "stream_ceiling.py"


def test_stream_ceiling_prints_a_rate_for_each_setting():
    done = subprocess.run([sys.executable, str(SCRIPT), "--sessions", "3", "--tokens", "10", "--per-message", "3",
                           "--repeats", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    assert [r["per_message"] for r in document["results"]] == [1, 3]
    assert all(r["median_tok_s"] > 0 for r in document["results"])
    assert document["results"][0]["vs_one_per_message"] == 1.0
