"""How many draft tokens pay, per session and per step: acceptance history against the measured row cost.

A draft row is worth verifying when the tokens it is expected to add outweigh what it slows the
step down for every session in it. With a step of t seconds emitting E tokens, one more row that
costs c seconds and is accepted with probability P raises throughput exactly when P / c > E / t,
so a session drafts its i-th token only while P_i >= c * E / t. c comes from step times measured
on this device at this batch size (`RowCost`): near zero where a step is bound by the host or by
reading weights, large where rows are computed one by one; P_i is the proposer's estimate,
rescaled by how well that estimate held for this session (`DraftPolicy.observe`). A session whose
drafts stop paying drafts nothing, and its calibration drifts back toward trust so it probes again
now and then rather than never.
"""

from __future__ import annotations

import math
from typing import Sequence

SMOOTHING = 0.2  # weight of a new step time in its bucket's average
MARGIN = 1.15  # a draft must beat the break-even point by this factor: noise costs, never gains
MIN_PROB = 0.05  # never verify a token less likely than this, even on a free row
DECAY = 0.8  # per observed draft: how fast a session's calibration follows its acceptance
RECOVERY = 0.98  # per step without drafts: how fast a session's calibration drifts back to the prior


def _bucket(rows: int) -> int:
    """Exact below 32 rows, then a quarter octave wide."""
    return rows if rows <= 32 else 32 + int(4 * math.log2(rows / 32))


def _slope(points: list[list[float]]) -> float | None:
    """Seconds per row of the least-squares line through (rows, seconds); None without a rising one."""
    if len(points) < 2:
        return None
    mean_rows = sum(r for r, _ in points) / len(points)
    mean_seconds = sum(t for _, t in points) / len(points)
    spread = sum((r - mean_rows) ** 2 for r, _ in points)
    if spread <= 0:
        return None
    slope = sum((r - mean_rows) * (t - mean_seconds) for r, t in points) / spread
    return slope if slope > 0 else None


class RowCost:
    """Step seconds by rows per step, as measured: one smoothed (rows, seconds) point per bucket."""

    def __init__(self) -> None:
        self._points: dict[int, list[float]] = {}

    def observe(self, rows: int, seconds: float) -> None:
        if rows <= 0 or seconds <= 0:
            return
        point = self._points.get(_bucket(rows))
        if point is None:
            self._points[_bucket(rows)] = [float(rows), seconds]
        else:
            point[0] += SMOOTHING * (rows - point[0])
            point[1] += SMOOTHING * (seconds - point[1])

    def seconds(self, rows: float) -> float | None:
        """Interpolated between measured sizes. Past the largest, along the least-squares line of
        all of them: its slope is what a row cost across the sizes seen, prefill steps included,
        which is no less than a decode row's cost where a small step waits on reading weights.
        With one size only, as if every row cost the same (a draft never looks cheaper than
        measured; the first drafted steps then measure more sizes)."""
        if not self._points:
            return None
        points = sorted(self._points.values())
        if rows <= points[0][0]:
            return points[0][1]
        for (r0, t0), (r1, t1) in zip(points, points[1:]):
            if rows <= r1:
                return t0 + (t1 - t0) * (rows - r0) / (r1 - r0) if r1 > r0 else t1
        r, t = points[-1]
        slope = _slope(points)
        return t * rows / r if slope is None else t + slope * (rows - r)

    def marginal(self, rows: int, extra: int) -> float | None:
        """Seconds per row of `extra` more rows than `rows`."""
        base, more = self.seconds(rows), self.seconds(rows + max(extra, 1))
        if base is None or more is None:
            return None
        return max(more - base, 0.0) / max(extra, 1)


class DraftPolicy:
    """Per-session calibration and the step's break-even probability. Written by the scheduler only."""

    def __init__(self, cost: RowCost | None = None) -> None:
        self.cost = cost or RowCost()
        self.threshold = MIN_PROB
        # session -> [accepted, expected]: decayed sums over its verified drafts.
        self._calibration: dict[int, list[float]] = {}

    def length(self, session: int, probs: Sequence[float]) -> int:
        """How many of a draft's tokens (with cumulative probability estimates `probs`) to verify."""
        scale = self.scale(session)
        count = 0
        for prob in probs:
            if min(prob * scale, 1.0) < self.threshold:
                break
            count += 1
        if count == 0:
            self._recover(session)
        return count

    def scale(self, session: int) -> float:
        accepted, expected = self._calibration.get(session, (0.0, 0.0))
        return (accepted + 1.0) / (expected + 1.0)  # one expected token's worth of prior trust

    def observe(self, session: int, probs: Sequence[float], num_accepted: int) -> None:
        """A verified draft: its estimates (as verified) against how many were accepted."""
        sums = self._calibration.setdefault(session, [0.0, 0.0])
        sums[0] = sums[0] * DECAY + num_accepted
        sums[1] = sums[1] * DECAY + sum(probs)

    def _recover(self, session: int) -> None:
        sums = self._calibration.get(session)
        if sums is not None:
            sums[0] *= RECOVERY
            sums[1] *= RECOVERY

    def step_done(self, rows: int, drafted: int, seconds: float, tokens: int) -> None:
        """A verifying step of `rows` rows (`drafted` of them drafts) took `seconds` and emitted
        `tokens`: the next step's break-even probability follows."""
        self.cost.observe(rows, seconds)
        base = rows - drafted
        step = self.cost.seconds(rows)
        marginal = self.cost.marginal(base, max(drafted, 1))
        if step is None or marginal is None or step <= 0 or tokens <= 0:
            self.threshold = MIN_PROB
            return
        self.threshold = max(MIN_PROB, MARGIN * marginal * tokens / step)

    def forget(self, session: int) -> None:
        self._calibration.pop(session, None)
