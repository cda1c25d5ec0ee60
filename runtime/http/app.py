"""The FastAPI application: routes, the caller's identity, and every error in OpenAI's envelope."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from kakeya.runtime.common.errors import KakeyaError

from .chat import chat_completions
from .completions import completions
from .errors import Json, envelope, error_response
from .metrics import MetricsMiddleware
from .responses import create_response
from .state import HttpState

_STARTED = int(time.time())


def build_app(state: HttpState) -> Any:
    """The ASGI application (FastAPI inside the metrics middleware)."""
    app = FastAPI(title="Kakeya OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=Json)

    @app.exception_handler(KakeyaError)
    async def runtime_error(request: Request, exc: KakeyaError) -> Json:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Json:
        return error_response(exc)  # logged there, answered 500 without internals

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Json:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return Json(envelope(f"{request.method} {request.url.path}: {exc.detail}", kind),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Json:
        return Json(envelope(str(exc.errors()[:3]), "invalid_request_error"), status_code=400)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await chat_completions(state, request)

    @app.post("/v1/completions")
    async def complete(request: Request) -> Any:
        return await completions(state, request)

    @app.post("/v1/responses")
    async def respond(request: Request) -> Any:
        return await create_response(state, request)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        state.authorize(request)
        state.ready()
        return {"object": "list", "data": [_model(state.model_id)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict:
        state.authorize(request)
        state.ready()
        if model_id != state.model_id:
            return Json(envelope(f"no model {model_id!r}; this server serves {state.model_id!r}",
                                         "not_found_error"), status_code=404)
        return _model(model_id)

    @app.get("/health")
    async def health() -> Json:
        """Readiness, without an API key (as gRPC health): 200 serving, 503 loading or draining."""
        if state.runtime is None or state.is_draining:
            return Json({"status": "unavailable", "reason": state.unavailable}, status_code=503)
        return Json({"status": "ok", "model": state.model_id})

    return MetricsMiddleware(app, state.metrics)


def _model(model_id: str) -> dict:
    return {"id": model_id, "object": "model", "created": _STARTED, "owned_by": "kakeya"}
