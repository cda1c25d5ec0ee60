"""The gRPC server process: listens first (health NOT_SERVING), loads the model, serves, drains."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import signal
from typing import Callable

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kakeya.proto.v1 import runtime_pb2

from kakeya.runtime.server import wire as service_handlers
from kakeya.runtime.server.auth import ApiKeys
from kakeya.runtime.common.config import RuntimeConfig, ServerConfig
from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.engine.loader import resolve_device
from kakeya.runtime.engine.process import EngineProcess
from kakeya.runtime.server.log_setup import configure_logging
from kakeya.runtime.server.ports import listen_port
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.servicer import RuntimeServicer
from kakeya.runtime.http.server import HttpServer

log = structlog.get_logger(__name__)

SERVICE_NAME = runtime_pb2.DESCRIPTOR.services_by_name["RuntimeService"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class RuntimeServer:
    """One gRPC server bound to one address, serving one Host once it is attached."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        api_keys = ApiKeys(config.server.api_keys)
        self.servicer = RuntimeServicer(api_keys)
        # The OpenAI-compatible HTTP API: the same keys, the same runtime, when a port is set.
        self.http = HttpServer(config.http, api_keys, config.model.model) if config.http.port is not None else None
        self.health = health.aio.HealthServicer()
        self._server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 0),  # a second server must not silently share the port
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ])
        service_handlers.add_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server,
        )
        self.address = ""
        self.metrics_port: int | None = None
        self.is_serving = False
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> str:
        server = self.config.server
        if server.unix_socket:
            if os.path.exists(server.unix_socket):
                os.unlink(server.unix_socket)
            self._bind(lambda: self._server.add_insecure_port(f"unix:{server.unix_socket}"), server.unix_socket)
            self.address = f"unix:{server.unix_socket}"
        else:
            address = f"{server.host}:{listen_port(server.host, server.port)}"
            if server.tls_cert:
                with open(server.tls_key, "rb") as key, open(server.tls_cert, "rb") as cert:
                    credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
                port = self._bind(lambda: self._server.add_secure_port(address, credentials), address)
            else:
                port = self._bind(lambda: self._server.add_insecure_port(address), address)
            self.address = f"{server.host}:{port}"
        await self._server.start()
        if self.http is not None:
            await self.http.start()
        if server.unix_socket:
            os.chmod(server.unix_socket, 0o600)
        try:
            # Checked now, not first found when the endpoint binds after the model has loaded for
            # many seconds; after the gRPC listener, so a metrics port equal to it is caught too.
            if server.metrics_port:  # 0 takes whatever port is free then
                _metrics_port(server, lambda: listen_port(server.metrics_host, server.metrics_port))
        except FailedPrecondition:
            await self._server.stop(0)
            raise
        await self._set_serving(False)
        log.info("server_listening", address=self.address)
        return self.address

    @staticmethod
    def _bind(add_port, address: str) -> int:
        try:
            return add_port()
        except RuntimeError as exc:  # grpc's only word for it; usually the address is taken
            raise FailedPrecondition(f"cannot listen on {address} (in use, or not an address here)") from exc

    async def attach(self, runtime: Host) -> None:
        """Serves `runtime`; FailedPrecondition, with nothing started, when the metrics port was
        taken since start() checked it."""
        server = self.config.server
        if server.metrics_port is not None:
            self.metrics_port = _metrics_port(server, lambda: runtime.metrics.serve(server.metrics_host,
                                                                                    server.metrics_port))
            log.info("metrics_listening", address=f"{server.metrics_host}:{self.metrics_port}")
        runtime.start()
        restored = await runtime.registry.restore()
        if restored:
            log.info("sessions_restored", count=restored, session_dir=self.config.limits.session_dir)
        self.servicer.runtime = runtime
        if self.http is not None:
            await self.http.attach(runtime)
        await self._set_serving(True)
        self._watchdog = asyncio.create_task(self._watch_scheduler(runtime), name="health-watchdog")

    async def _watch_scheduler(self, runtime: Host) -> None:
        """Readiness follows the scheduler and the engine: NOT_SERVING once either is dead, and while
        pending work sees no step finish."""
        stall_s = self.config.server.stall_timeout_s
        while True:
            await asyncio.sleep(min(stall_s / 4, 1.0))
            serving = runtime.is_alive and not runtime.scheduler.is_stalled(stall_s)
            if serving != self.is_serving:
                log.warning("scheduler_stalled" if not serving else "scheduler_recovered", stall_s=stall_s)
                await self._set_serving(serving)

    async def _set_serving(self, serving: bool) -> None:
        self.is_serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drains: readiness off and new calls UNAVAILABLE at once; running Generates get up to
        grace_s to finish, then are cancelled; then every session is closed."""
        grace_s = self.config.server.grace_s if grace_s is None else grace_s
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.wait({self._watchdog})
        self.servicer.is_draining = True
        if self.http is not None:
            self.http.drain()
        await self.health.enter_graceful_shutdown()
        runtime, self.servicer.runtime = self.servicer.runtime, None
        if runtime is not None:
            await runtime.registry.wait_idle(grace_s)
            runtime.metrics.stop()
            await runtime.stop()
        await self._server.stop(grace_s)
        if self.http is not None:
            await self.http.stop(grace_s)


async def serve(config: RuntimeConfig) -> int:
    """Runs until SIGINT/SIGTERM or engine death; returns the process exit code."""
    stop = asyncio.Event()
    exit_code = 0

    def on_engine_death(exc: BaseException) -> None:
        nonlocal exit_code
        log.critical("engine_dead", error=repr(exc))
        exit_code = 70
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = RuntimeServer(config)
    try:
        await server.start()
    except FailedPrecondition as exc:
        log.error("server_start_failed", error=str(exc))
        return 1
    try:
        engine_process = _start_engine_process(config)
    except FailedPrecondition as exc:
        log.error("model_load_failed", error=str(exc))
        await server.stop(0)
        return 1
    loader = asyncio.ensure_future(asyncio.to_thread(Host.load, config, on_engine_death=on_engine_death,
                                                     engine_process=engine_process))
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loader, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not loader.done() and engine_process is not None:
        engine_process.kill()  # stopped while loading: the loader's wait ends with the child
    if loader.done():
        try:
            runtime = loader.result()
        except Exception as exc:  # noqa: BLE001 - a bad --model must end the process clearly
            log.error("model_load_failed", error=str(exc))
            if engine_process is not None:
                engine_process.stop()
            await server.stop(0)
            return 1
        frozen = _freeze_loaded_objects()
        if not await _attach(server, runtime):
            return 1
        log.info("server_ready", address=server.address, gc_frozen_objects=frozen)
        await waiter
    log.info("server_draining")
    await server.stop()
    log.info("server_stopped", exit_code=exit_code)
    return exit_code


def _start_engine_process(config: RuntimeConfig) -> EngineProcess | None:
    """The engine process, started now, on the main thread, where the config asks for one on this
    device; it loads the model while the server listens."""
    if not config.engine.uses_engine_process(resolve_device(config.model.device).type):
        return None
    process = EngineProcess(config, functools.partial(configure_logging, config.server.log_format,
                                                      config.server.log_level))
    log.info("engine_process_started", pid=process.pid)
    return process


async def _attach(server: RuntimeServer, runtime: Host) -> bool:
    try:
        await server.attach(runtime)
    except FailedPrecondition as exc:
        log.error("server_start_failed", error=str(exc))
        await runtime.stop()
        await server.stop(0)
        return False
    return True


def _metrics_port(server: ServerConfig, bind: Callable[[], int]) -> int:
    """`bind()`'s port; its failure as one FailedPrecondition that names the setting to change."""
    try:
        return bind()
    except (FailedPrecondition, OSError) as exc:
        reason = (str(exc) if isinstance(exc, FailedPrecondition)
                  else f"cannot listen on {server.metrics_host}:{server.metrics_port}: {exc.strerror}")
        raise FailedPrecondition(f"cannot serve /metrics: {reason} (choose another --metrics-port, or -1 "
                                 "for no endpoint)") from exc


def _freeze_loaded_objects() -> int:
    """Moves everything loading built (the model, torch's and transformers' modules) out of the
    cyclic collector's reach: it lives as long as the process. Without this, each full collection
    walks all of it while holding the GIL; on an H200 serving one long conversation the server's
    full collections paused the process for 0.4-0.5 s each. Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
