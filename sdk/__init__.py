"""Kakeya Python SDK: sessions of raw token ids on a Kakeya runtime, over gRPC.

`Client` is the asyncio API; `SyncClient` is the same surface for blocking code. Importing the
SDK needs only grpcio and protobuf; the chat helpers load transformers (the `[chat]` extra) only
when a tokenizer is loaded.
"""

from .chat import ChatSession, ChatStateError, Turn
from .client import Client
from .errors import (ClientClosedError, DeadlineExceededError, FailedPreconditionError, InternalError,
                     InvalidArgumentError, KakeyaError, ResourceExhaustedError, RuntimeUnavailableError,
                     SessionClosedError, SessionNotFoundError, UnauthenticatedError)
from .session import Session
from .stream import GenerationStream
from .sync import SyncClient, SyncGenerationStream, SyncSession
from .text import IncrementalDecoder, stream_text
from .tokenizer import load_tokenizer
from .types import RuntimeInfo, SessionInfo, SessionSummary, StopReason

__all__ = [
    "Client", "Session", "GenerationStream", "SyncClient", "SyncSession", "SyncGenerationStream",
    "StopReason", "SessionInfo", "SessionSummary", "RuntimeInfo",
    "KakeyaError", "SessionNotFoundError", "InvalidArgumentError", "FailedPreconditionError",
    "ResourceExhaustedError", "UnauthenticatedError", "RuntimeUnavailableError", "DeadlineExceededError",
    "InternalError", "SessionClosedError", "ClientClosedError",
    "ChatSession", "ChatStateError", "Turn", "load_tokenizer", "IncrementalDecoder", "stream_text",
]
