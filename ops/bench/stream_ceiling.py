"""The token rate the Generate stream's transport alone allows: N concurrent streams from one
client process, a server process that yields tokens as fast as gRPC takes them (no model, no
scheduler). One message a token (the contract's default) is the baseline; `--per-message K` also
times K tokens a message (`max_tokens_per_message`). A many-session runtime's tokens per second
cannot exceed this on the same host. Prints one JSON document.

    python ops/bench/stream_ceiling.py --sessions 64 --tokens 256 --per-message 1 4 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

import grpc

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc


class _Streamer(runtime_pb2_grpc.RuntimeServiceServicer):
    """Generate only: max_tokens token ids, grouped as the request allows, then done."""

    async def Generate(self, request, context):
        per_message = max(1, request.max_tokens_per_message)
        for start in range(0, request.max_tokens, per_message):
            ids = list(range(start, min(start + per_message, request.max_tokens)))
            yield (pb.GenerateResponse(token_id=ids[0]) if len(ids) == 1
                   else pb.GenerateResponse(tokens=pb.TokenIds(token_ids=ids)))
        yield pb.GenerateResponse(done=pb.GenerateDone(generated_token_count=request.max_tokens))


def _serve(address: str, ready) -> None:
    async def main() -> None:
        server = grpc.aio.server()
        runtime_pb2_grpc.add_RuntimeServiceServicer_to_server(_Streamer(), server)
        server.add_insecure_port(address)
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


async def _run(address: str, sessions: int, tokens: int, per_message: int) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = runtime_pb2_grpc.RuntimeServiceStub(channel)

        async def one() -> int:
            count = 0
            async for response in stub.Generate(pb.GenerateRequest(max_tokens=tokens,
                                                                   max_tokens_per_message=per_message)):
                kind = response.WhichOneof("payload")
                count += 1 if kind == "token_id" else len(response.tokens.token_ids) if kind == "tokens" else 0
            return count

        await asyncio.gather(*(one() for _ in range(sessions)))  # warm-up
        started = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(sessions)))
        elapsed = time.perf_counter() - started
    if sum(counts) != sessions * tokens:
        raise RuntimeError(f"got {sum(counts)} tokens instead of {sessions * tokens}")
    return sessions * tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256, help="tokens a stream")
    parser.add_argument("--per-message", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        address = f"unix:{os.path.join(tmp, 'stream.sock')}"
        ready = multiprocessing.Event()
        server = multiprocessing.Process(target=_serve, args=(address, ready), daemon=True)
        server.start()
        try:
            if not ready.wait(60):
                sys.exit("the stream server did not start")
            rates = {k: [] for k in sorted({1, *args.per_message})}
            for _ in range(args.repeats):  # interleaved, so drift of the host hits every setting alike
                for k in rates:
                    rates[k].append(asyncio.run(_run(address, args.sessions, args.tokens, k)))
        finally:
            server.terminate()
            server.join(10)
    base = statistics.median(rates[1])
    print(json.dumps({
        "benchmark": "stream_ceiling", "sessions": args.sessions, "tokens_per_stream": args.tokens,
        "cpu_count": os.cpu_count(),
        "results": [{"per_message": k, "tok_s": [round(r) for r in v], "median_tok_s": round(statistics.median(v)),
                     "vs_one_per_message": round(statistics.median(v) / base, 2)} for k, v in rates.items()],
    }, indent=2))


if __name__ == "__main__":
    main()
