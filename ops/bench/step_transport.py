"""Round-trip cost of one engine step message between two processes, by transport.

A step crosses the process boundary as one message each way: 64 rows in (a KV handle, a token,
a sampler key, a stop rule), 64 row results out (tokens, a stop, KV positions). This measures the
round trip of that pair through each candidate route, with an echoing child started by `spawn`,
and prints one JSON document with medians and p99s in microseconds. The baseline is a pickle
round trip inside one process (what the message costs to build and read, without a transport).

    python ops/bench/step_transport.py [--rows 64] [--iterations 5000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import pickle
import platform
import statistics
import time

ROUTES = ("pipe", "zmq_ipc")


def step_message(rows: int) -> tuple:
    eos = frozenset({2})
    return ("step", (), tuple((kv_id, (1000 + kv_id,), kv_id, None, (), None, (eos, 32)) for kv_id in range(rows)))


def result_message(rows: int) -> tuple:
    return ("result", tuple(((1000 + i,), 0, 0, None, 500 + i, 0, -1) for i in range(rows)), 0.001, 0.0001)


def _echo_pipe(conn, rows: int) -> None:
    reply = result_message(rows)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        conn.send(reply)


def _echo_zmq(address: str, rows: int) -> None:
    import zmq

    socket = zmq.Context.instance().socket(zmq.PAIR)
    socket.connect(address)
    reply = result_message(rows)
    while True:
        message = pickle.loads(socket.recv())
        if message is None:
            return
        socket.send(pickle.dumps(reply, protocol=5))


def _time(round_trip, iterations: int) -> dict[str, float]:
    for _ in range(iterations // 10):
        round_trip()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter_ns()
        round_trip()
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return {"p50_us": round(statistics.median(samples), 1), "p99_us": round(samples[int(len(samples) * 0.99)], 1),
            "mean_us": round(statistics.fmean(samples), 1)}


def bench_pipe(ctx, rows: int, iterations: int) -> dict[str, float]:
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_echo_pipe, args=(child, rows), daemon=True)
    process.start()
    child.close()
    message = step_message(rows)

    def round_trip():
        parent.send(message)
        parent.recv()

    try:
        return _time(round_trip, iterations)
    finally:
        parent.send(None)
        process.join(10)


def bench_zmq(ctx, rows: int, iterations: int, directory: str) -> dict[str, float]:
    import zmq

    address = f"ipc://{directory}/step-{os.getpid()}"
    socket = zmq.Context.instance().socket(zmq.PAIR)
    socket.bind(address)
    process = ctx.Process(target=_echo_zmq, args=(address, rows), daemon=True)
    process.start()
    message = step_message(rows)

    def round_trip():
        socket.send(pickle.dumps(message, protocol=5))
        pickle.loads(socket.recv())

    try:
        return _time(round_trip, iterations)
    finally:
        socket.send(pickle.dumps(None))
        process.join(10)
        socket.close(0)


def bench_in_process(rows: int, iterations: int) -> dict[str, float]:
    message, reply = step_message(rows), result_message(rows)
    return _time(lambda: (pickle.loads(pickle.dumps(message, protocol=5)),
                          pickle.loads(pickle.dumps(reply, protocol=5))), iterations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every route")
    parser.add_argument("--dir", default="/tmp")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    has_zmq = importlib.util.find_spec("zmq") is not None  # the bench extra: pip install -e .[bench]
    routes = ROUTES if has_zmq else ("pipe",)
    rounds: dict[str, list[dict[str, float]]] = {"in_process_pickle": [], **{route: [] for route in routes}}
    for _ in range(args.rounds):
        rounds["in_process_pickle"].append(bench_in_process(args.rows, args.iterations))
        rounds["pipe"].append(bench_pipe(ctx, args.rows, args.iterations))
        if has_zmq:
            rounds["zmq_ipc"].append(bench_zmq(ctx, args.rows, args.iterations, args.dir))
    medians = {route: {key: statistics.median(r[key] for r in results) for key in results[0]}
               for route, results in rounds.items()}
    base = medians["in_process_pickle"]["p50_us"]
    print(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": args.rows, "iterations": args.iterations, "rounds": args.rounds,
        "message_bytes": {"step": len(pickle.dumps(step_message(args.rows), protocol=5)),
                          "result": len(pickle.dumps(result_message(args.rows), protocol=5))},
        "median_of_rounds": medians,
        "p50_over_in_process_pickle": {route: round(m["p50_us"] / base, 2) for route, m in medians.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
