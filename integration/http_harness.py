"""Runtimes with the OpenAI-compatible HTTP API on, and a raw HTTP/1.1 client for what no SDK sends."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass

import openai

from kakeya.runtime.common.config import HttpConfig
from kakeya.runtime.forward.loaded_model import LoadedModel
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.server import RuntimeServer

from .harness import TIMEOUT_S, eventually, runtime_config


@dataclass
class HttpHandle:
    server: RuntimeServer
    runtime: Host | None
    port: int

    @property
    def state(self):
        return self.server.http.state

    def client(self, api_key: str = "unused") -> openai.AsyncOpenAI:
        # No retries: a test sees the first answer, whatever its status.
        return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=api_key, max_retries=0,
                                  timeout=TIMEOUT_S)

    async def stop(self) -> None:
        await asyncio.wait_for(self.server.stop(0), TIMEOUT_S)


async def start_http(loaded: LoadedModel | None, tokenizer, limits: dict | None = None, server: dict | None = None,
                     http: dict | None = None) -> HttpHandle:
    """A runtime serving gRPC and HTTP; with `loaded` None it stays loading (no runtime attached)."""
    config = dataclasses.replace(runtime_config(limits=limits, server=server),
                                 http=HttpConfig(port=0, **(http or {})))
    rs = RuntimeServer(config)
    rs.http.use_tokenizer(tokenizer)
    await rs.start()
    runtime = None
    if loaded is not None:
        runtime = Host(config, loaded, on_engine_death=lambda exc: None)
        await asyncio.wait_for(rs.attach(runtime), TIMEOUT_S)
    return HttpHandle(rs, runtime, rs.http.port)


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


async def raw(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
              ) -> RawReply:
    """One request on its own connection (Connection: close), read to the end."""

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
                     f"Content-Length: {len(body)}", "Content-Type: application/json"]
            lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()

    data = await asyncio.wait_for(exchange(), TIMEOUT_S)
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    fields = {name.lower(): value for name, value in fields.items()}
    if fields.get("transfer-encoding") == "chunked":
        payload = _unchunk(payload)
    return RawReply(int(status_line.split(" ")[1]), fields, payload)


def _unchunk(data: bytes) -> bytes:
    out, rest = [], data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


async def settled(handle: HttpHandle) -> None:
    """No generation running, no close pending, and every live session reusable from the index:
    nothing an HTTP request started is left behind."""
    runtime, sessions = handle.runtime, handle.state.sessions
    await eventually(lambda: runtime.scheduler.num_running == 0, TIMEOUT_S, "the scheduler to drain")
    await asyncio.wait_for(sessions.wait_closed(), TIMEOUT_S)
    await eventually(lambda: runtime.registry.num_active == sessions.num_indexed(), TIMEOUT_S,
                     "every live session to be indexed")
