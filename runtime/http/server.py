"""The HTTP API's server: uvicorn on the runtime's event loop, beside grpc.aio.

It listens before the model loads (health answers 503 until then), loads the tokenizer while the
model loads, and drains with the gRPC server: new requests get 503, running ones finish or end
with the runtime."""

from __future__ import annotations

import asyncio
import pathlib
import socket
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn

from kakeya.runtime.common.config import HttpConfig
from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.tokenizer import load_tokenizer

from .app import build_app
from .metrics import HttpMetrics
from .state import HttpState, Identifies
from .template import ChatTemplate

if TYPE_CHECKING:
    from kakeya.runtime.server.host import Host

log = structlog.get_logger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM belongs to serve(), which drains gRPC and HTTP
    together (uvicorn would take the signal for itself and stop only HTTP)."""

    def capture_signals(self):  # noqa: ANN201
        return _NoSignals()

    def install_signal_handlers(self) -> None:  # the same hook in uvicorn releases before 0.29
        return None


class _NoSignals:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class HttpServer:
    def __init__(self, config: HttpConfig, api_keys: Identifies, model: str | None) -> None:
        self.config = config
        self.metrics = HttpMetrics()
        self.state = HttpState(api_keys, config.max_body_bytes, self.metrics)
        self.port: int | None = None
        self._model = model
        self._tokenizer: Any = None
        self._loading: asyncio.Future | None = None
        self._uvicorn: _Uvicorn | None = None
        self._task: asyncio.Task | None = None

    def use_tokenizer(self, tokenizer: Any) -> None:
        """A tokenizer already loaded (the model's), instead of loading it again at start."""
        self._tokenizer = tokenizer

    async def start(self) -> int:
        sock = _listen(self.config.host, self.config.port or 0)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(build_app(self.state), lifespan="off", log_config=None, access_log=False,
                                timeout_graceful_shutdown=5, ws="none")
        self._uvicorn = _Uvicorn(config)
        self._task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]), name="http-server")
        if self._tokenizer is None:
            self._loading = asyncio.ensure_future(asyncio.to_thread(load_tokenizer, self._model))
        log.info("http_listening", address=f"{self.config.host}:{self.port}")
        return self.port

    async def attach(self, runtime: "Host") -> None:
        """Serves the runtime once its tokenizer is there; a tokenizer that fails leaves HTTP at 503."""
        self.metrics.register(runtime.metrics.registry)
        try:
            tokenizer = self._tokenizer if self._loading is None else await self._loading
            template = None
            if self.config.chat_template:
                template = pathlib.Path(self.config.chat_template).read_text(encoding="utf-8")
            chat = ChatTemplate(tokenizer, template)
        except Exception as exc:  # noqa: BLE001 - gRPC serves on; HTTP says why it cannot
            log.error("http_tokenizer_failed", error=str(exc))
            self.state.unavailable = f"the HTTP API has no tokenizer: {exc}"
            return
        self.state.attach(runtime, chat, self.config.reuse_sessions)
        log.info("http_ready", tools=chat.supports_tools, eos_token_ids=sorted(chat.eos_token_ids))

    def drain(self) -> None:
        """New requests get 503 from now on; running ones go on."""
        self.state.is_draining = True
        self.state.unavailable = "the runtime is shutting down"

    async def stop(self, grace_s: float) -> None:
        self.drain()
        if self.state.sessions is not None:
            await self.state.sessions.wait_closed()
        self.state.detach("the runtime is shutting down")
        if self._uvicorn is not None and self._task is not None:
            self._uvicorn.should_exit = True
            done, _ = await asyncio.wait({self._task}, timeout=max(grace_s, 0.5) + 1.0)
            if not done:
                self._uvicorn.force_exit = True
                self._task.cancel()
                await asyncio.wait({self._task})
        if self._loading is not None and not self._loading.done():
            await asyncio.wait({self._loading})  # a thread cannot be cancelled; it ends by itself


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        raise FailedPrecondition(f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}") from exc
    return sock
