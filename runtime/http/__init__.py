"""The OpenAI-compatible HTTP API: FastAPI on uvicorn, on the runtime's event loop, forwarding to
the same session actors as gRPC. See docs/http.md."""
