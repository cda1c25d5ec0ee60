"""The server's resident set size, read from /proc, and the statistics that tell a leak from the
saw-tooth of memory going back to the OS in bursts.
"""

from __future__ import annotations


def read_rss_mb(pid: int) -> float | None:
    """Resident set size of a local process in MiB (None where /proc is not readable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def slope_per_1000(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of MiB over requests, per 1,000 requests; None with fewer than 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var_x = sum((x - mean_x) ** 2 for x, _ in points)
    if var_x == 0:
        return None
    cov = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return cov / var_x * 1000


def floor_rise_mb(points: list[tuple[int, float]]) -> float | None:
    """How far the RSS floor rose, in MiB: the lowest sample of the second half of `points` against
    the lowest of the first. Freed memory goes back to the OS in bursts, so RSS saw-tooths by tens
    of MiB, and over a short run the least-squares slope follows the teeth; a leak lifts the floor.
    None under 4 points."""
    if len(points) < 4:
        return None
    first, second = points[:len(points) // 2], points[len(points) // 2:]
    return min(y for _, y in second) - min(y for _, y in first)


def floor_rise_per_1000(points: list[tuple[int, float]]) -> float | None:
    """floor_rise_mb per 1,000 requests, over the requests between the halves' means."""
    rise = floor_rise_mb(points)
    if rise is None:
        return None
    first, second = points[:len(points) // 2], points[len(points) // 2:]
    span = sum(x for x, _ in second) / len(second) - sum(x for x, _ in first) / len(first)
    return rise / span * 1000
