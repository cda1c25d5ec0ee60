"""Same-run A/B of two checkouts on the suite's multi-session benchmark, interleaved.

Each round runs `ops/bench/suite.py` of one checkout, then of the other (the order alternates by
round), each against its own server process, so drifts of a shared machine hit both sides alike.
Prints one JSON document: per side and session count, every round's tok/s and ITL p50, their
medians, and the ratio of the second checkout's median to the first's.

    python ops/bench/ab_suite.py --a /tmp/before --b . --rounds 2 -- --device cuda --only multi \\
        --sessions 1 64 --skip-static --baseline-timeout-s 3
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile


def package_dir(checkout: pathlib.Path, into: pathlib.Path) -> pathlib.Path:
    """A folder holding `kakeya` as the installed package sees it (sdk/ plus runtime, actors, proto)."""
    package = into / "kakeya"
    package.mkdir(parents=True)
    for item in (checkout / "sdk").iterdir():
        (package / item.name).symlink_to(item)
    for sub in ("runtime", "actors", "proto"):
        (package / sub).symlink_to(checkout / sub)
    return into


def run_suite(checkout: pathlib.Path, suite_args: list[str], scratch: pathlib.Path, tag: str) -> dict:
    out = scratch / tag
    pythonpath = [str(package_dir(checkout, scratch / f"pkg_{tag}"))]
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath))
    subprocess.run([sys.executable, str(checkout / "ops" / "bench" / "suite.py"), *suite_args, "--out", str(out)],
                   cwd=checkout, env=env, check=True)
    return json.loads(out.with_suffix(".json").read_text())


def figures(document: dict) -> dict[int, dict[str, float]]:
    return {row["sessions"]: {"tok_s": row["kakeya"]["tok_s"], "itl_p50_ms": row["kakeya"]["itl_p50_ms"]}
            for row in document["multi_session"]["results"]}


def summary(runs: dict[str, list[dict[int, dict[str, float]]]]) -> dict:
    sides = {}
    for side, rounds in runs.items():
        sessions = sorted(rounds[0])
        sides[side] = {str(n): {key: {"rounds": [r[n][key] for r in rounds],
                                      "median": statistics.median(r[n][key] for r in rounds)}
                                for key in ("tok_s", "itl_p50_ms")} for n in sessions}
    ratios = {n: round(sides["b"][n]["tok_s"]["median"] / sides["a"][n]["tok_s"]["median"], 3)
              for n in sides["a"] if n in sides["b"]}
    return {"sides": sides, "tok_s_ratio_b_over_a": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, type=pathlib.Path, help="the first checkout (the baseline)")
    parser.add_argument("--b", required=True, type=pathlib.Path, help="the second checkout")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, help="also write the JSON here")
    parser.add_argument("suite_args", nargs=argparse.REMAINDER, help="after --: arguments of suite.py")
    args = parser.parse_args()
    suite_args = [a for a in args.suite_args if a != "--"]
    checkouts = {"a": args.a.resolve(), "b": args.b.resolve()}
    runs: dict[str, list] = {"a": [], "b": []}
    devices = set()
    with tempfile.TemporaryDirectory(prefix="kakeya-ab-") as tmp:
        for round_index in range(args.rounds):
            for side in ("a", "b") if round_index % 2 == 0 else ("b", "a"):
                document = run_suite(checkouts[side], suite_args, pathlib.Path(tmp), f"{side}{round_index}")
                devices.add(document.get("device_name", document.get("device")))
                runs[side].append(figures(document))
                # Written after every run, so a run cut off by a time limit still leaves its rounds.
                print(json.dumps({"round": round_index, "side": side, "figures": runs[side][-1]}), flush=True)
                if args.out is not None and runs["a"] and runs["b"]:
                    args.out.write_text(json.dumps(result(args, suite_args, devices, runs), indent=1) + "\n")
    print(json.dumps(result(args, suite_args, devices, runs), indent=1))


def result(args, suite_args: list[str], devices: set, runs: dict[str, list]) -> dict:
    return {"benchmark": "ab_suite", "a": str(args.a), "b": str(args.b), "rounds": min(map(len, runs.values())),
            "suite_args": suite_args, "devices": sorted(devices), **summary(runs)}


if __name__ == "__main__":
    main()
