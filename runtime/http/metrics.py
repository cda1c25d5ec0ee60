"""Per-route metrics of the HTTP API: requests by status, and latency (to the last body byte)."""

from __future__ import annotations

import time
from typing import Any, Callable

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram

log = structlog.get_logger(__name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models", "/health")


class HttpMetrics:
    """Built before the model loads (requests answered 503 count too); `register` adds the series
    to the runtime's registry, which /metrics serves, once it exists."""

    def __init__(self) -> None:
        self.requests = Counter("kakeya_http_requests", "HTTP requests answered, by route, method and status.",
                                ["route", "method", "status"], registry=None)
        self.duration = Histogram("kakeya_http_request_duration_seconds",
                                  "From an HTTP request's arrival to its response's last byte, by route.",
                                  ["route"], buckets=_SECONDS, registry=None)
        self.cancelled_streams = Counter("kakeya_http_streams_cancelled",
                                 "Streamed responses that ended before their last event (client gone, or an error).", ["route"], registry=None)

    def register(self, registry: CollectorRegistry) -> None:
        for collector in (self.requests, self.duration, self.cancelled_streams):
            registry.register(collector)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route).observe(seconds)


def route_of(path: str) -> str:
    """The path as a label: a known route, or "other" (paths never become unbounded labels)."""
    path = path.rstrip("/") or "/"
    if path.startswith("/v1/responses/"):
        return "/v1/responses/{id}"
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return path if path in ROUTES else "other"


class MetricsMiddleware:
    """Plain ASGI (no buffering): a streamed body is timed to its end, not to its headers."""

    def __init__(self, app: Callable, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = scope.get("method", "")
        method = method if method in ("GET", "POST") else "other"
        route = route_of(scope.get("path", ""))
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            seconds = time.monotonic() - started
            self.metrics.observe(route, method, status, seconds)
            # One line per request, as gRPC logs one `rpc_finished` per call.
            log.info("http_finished", route=route, method=method, status=status, duration_s=round(seconds, 4))
