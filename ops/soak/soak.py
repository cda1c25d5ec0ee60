"""Soak runner: mixed session traffic against a running Kakeya runtime, then a one-line JSON report.

Start a runtime, then soak it (from the repository root):

    .venv/bin/kakeya serve --port 50051 &
    .venv/bin/python ops/soak/soak.py --address 127.0.0.1:50051 --sessions 8 --minutes 10 --pid $!

Each of --sessions workers owns one session at a time and loops until the time is up over a
weighted mix: append 1-8 tokens, generate 1-3 tokens (greedy or seeded sampling), a Generate
cancelled after its first token, GetSessionInfo, GetRuntimeInfo, and close-then-create (a session
is also replaced once its history passes --max-history). Every answer is checked against the
worker's model of its session's history; a status other than the expected one, or a history that
disagrees with the model, counts as an error. Every 100 requests it samples the server's RSS
(--pid: /proc/PID/status VmRSS, so the server must run on this machine) and the KV bytes in use
(GetRuntimeInfo). At the end every worker closes its session and the runner reads the KV bytes
again: with no other clients on the server they must be 0.

The report: requests, errors (and their kinds), rss_start_mb, rss_end_mb,
rss_slope_mb_per_1000_requests (least squares over the samples after the first quarter, the
warm-up), rss_floor_rise_mb_per_1000_requests (how far the lowest RSS rose from the first to the
second half of those samples: steadier than the slope over a short run; also in MiB as
rss_floor_rise_mb), kv_bytes_end and counters of what ran. The exit status is 1 when there were errors, when
KV bytes are still held at the end, or when the RSS slope is above --max-rss-slope.

This file is the command line; the traffic is soak_traffic.py's, its calls soak_calls.py's and
the RSS statistics soak_rss.py's, imported from this folder.

Needs only the SDK install (grpcio, protobuf): `pip install kakeya` or the repository's .venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import grpc

from kakeya.proto.v1 import runtime_pb2_grpc
from soak_rss import read_rss_mb
from soak_traffic import Soak, SoakConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port or unix:PATH of the runtime")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent sessions (one worker each)")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to drive traffic")
    parser.add_argument("--pid", type=int, default=None, help="the server's process id, to sample its RSS")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-history", type=int, default=192, help="replace a session past this many tokens")
    parser.add_argument("--api-key", default=None, help="sent as 'authorization: Bearer KEY'")
    parser.add_argument("--max-rss-slope", type=float, default=None,
                        help="fail when the RSS slope (MiB per 1,000 requests) is above this")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.minutes <= 0:
        parser.error("--sessions must be >= 1 and --minutes > 0")
    return args


async def main_async(args: argparse.Namespace) -> dict:
    config = SoakConfig(sessions=args.sessions, seconds=args.minutes * 60, seed=args.seed,
                        max_history=args.max_history,
                        metadata=(("authorization", f"Bearer {args.api_key}"),) if args.api_key else ())
    rss = (lambda: read_rss_mb(args.pid)) if args.pid else (lambda: None)
    async with grpc.aio.insecure_channel(args.address) as channel:
        return await Soak(runtime_pb2_grpc.RuntimeServiceStub(channel), config, rss).run()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = asyncio.run(main_async(args))
    print(json.dumps(summary, sort_keys=True), flush=True)
    slope = summary["rss_slope_mb_per_1000_requests"]
    failed = (summary["errors"] > 0 or summary["kv_bytes_end"] != 0
              or (args.max_rss_slope is not None and slope is not None and slope > args.max_rss_slope))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
