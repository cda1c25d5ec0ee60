"""The gRPC servicer: validates and translates proto messages, forwards them to actors, owns nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import secrets
import time
from typing import AsyncIterator, Callable, Mapping, TypeVar

import grpc
import structlog

from kakeya.actors.messages import Append, Generate, GenerateParams
from kakeya.actors.session import SessionActor
from kakeya.actors.session_state import Export
from kakeya.actors.token_stream import TokenStream
from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc

from kakeya.runtime.server.auth import ApiKeys
from kakeya.runtime.server.session_transfer import export_chunks, read_import
from kakeya.runtime.server.wire import MalformedRequest, event_to_proto, tokens_to_proto
from kakeya.runtime.common.errors import (FailedPrecondition, InvalidRequest, KakeyaError, Overloaded, SessionNotFound,
                     Unauthenticated, Unavailable)
from kakeya.runtime.server.host import Host
from kakeya.runtime.engine.sampler import SamplingParams

log = structlog.get_logger(__name__)

# The one table from error type to status code; the first matching base class wins.
STATUS_OF: tuple[tuple[type[KakeyaError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (SessionNotFound, grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_of(error: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_OF:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, error: BaseException, rpc: str) -> None:
    code = status_of(error)
    if code is grpc.StatusCode.INTERNAL:
        log.error("rpc_internal_error", rpc=rpc, error=repr(error), exc_info=error)
        await context.abort(code, f"internal error: {type(error).__name__}")
    await context.abort(code, str(error))


def _begin(rpc: str, request) -> float:
    """Binds the request's log fields (for every line logged while handling it); returns its start."""
    if isinstance(request, MalformedRequest):
        structlog.contextvars.bind_contextvars(request_id=secrets.token_hex(6), rpc=rpc, session_id=None)
        return time.monotonic()
    session_id = getattr(request, "session_id", None) or None
    if session_id is not None and len(session_id) > 64:
        # Ids are 32 hex characters; a longer one is a client's mistake and must not bloat every line.
        session_id = session_id[:32] + "..."
    structlog.contextvars.bind_contextvars(request_id=secrets.token_hex(6), rpc=rpc, session_id=session_id)
    return time.monotonic()


def _log_outcome(started: float, code: grpc.StatusCode, **facts) -> None:
    """One line per RPC: what, on which session, how long, and how it ended."""
    log.info("rpc_finished", status=code.name, duration_s=round(time.monotonic() - started, 4), **facts)


def unary(method: Callable) -> Callable:
    @functools.wraps(method)
    async def wrapper(self, request, context):
        started, code = _begin(method.__name__, request), grpc.StatusCode.OK
        try:
            _check_parsed(request)
            return await method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error leaves through the table
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = status_of(exc)
            await _abort(context, exc, method.__name__)
        finally:
            _log_outcome(started, code)
    return wrapper


class RuntimeServicer(runtime_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, api_keys: ApiKeys) -> None:
        self.runtime: Host | None = None  # set once the model is loaded, cleared when draining
        self.is_draining = False
        self._api_keys = api_keys

    def _ready(self, context) -> tuple[Host, str]:
        """The runtime and the caller's owner id; checks the API key before anything else."""
        owner = self._api_keys.identify(context.invocation_metadata())
        if self.is_draining:
            raise Unavailable("the runtime is shutting down")
        if self.runtime is None:
            raise Unavailable("the model is still loading")
        return self.runtime, owner

    @unary
    async def CreateSession(self, request: pb.CreateSessionRequest, context) -> pb.CreateSessionResponse:
        runtime, owner = self._ready(context)
        _check_ids(request.eos_token_ids, runtime.loaded.vocab_size, "eos_token_ids")
        # A session that names no ids stops where the model ends its turn, as a chat client expects.
        eos = request.eos_token_ids or (() if request.no_default_eos else runtime.loaded.eos_token_ids)
        session_id = await runtime.registry.create(request.client_label, frozenset(eos), owner)
        structlog.contextvars.bind_contextvars(session_id=session_id)  # the request named none: log the new one
        return pb.CreateSessionResponse(session_id=session_id)

    @unary
    async def AppendTokens(self, request: pb.AppendTokensRequest, context) -> pb.AppendTokensResponse:
        runtime, owner = self._ready(context)
        session = runtime.registry.get(request.session_id, owner)
        reply = _future()
        session.send(Append(tuple(request.token_ids), reply))
        return pb.AppendTokensResponse(history_length=await reply)

    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateResponse]:
        started, code, tokens = _begin("Generate", request), grpc.StatusCode.CANCELLED, 0
        try:
            _check_parsed(request)
            runtime, owner = self._ready(context)
            params = GenerateParams(request.max_tokens, _sampling(request))
            if params.max_tokens == 0:
                raise InvalidRequest("max_tokens must be > 0")
            limit, minimum = _message_sizes(request)
            session = runtime.registry.get(request.session_id, owner)
            stream = TokenStream()
            session.send(Generate(params, stream))
        except Exception as exc:  # noqa: BLE001
            _log_outcome(started, status_of(exc))
            await _abort(context, exc, "Generate")
            return
        try:
            async for item in stream.batches(limit, minimum):
                if isinstance(item, list):
                    tokens += len(item)
                    yield tokens_to_proto(item)
                else:
                    yield event_to_proto(item)
            code = grpc.StatusCode.OK
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001
            code = status_of(exc)
            await _abort(context, exc, "Generate")
        finally:
            # Client gone, deadline hit or stream done: the scheduler drops the job next step.
            stream.cancel()
            _log_outcome(started, code, tokens=tokens)

    @unary
    async def CloseSession(self, request: pb.CloseSessionRequest, context) -> pb.CloseSessionResponse:
        runtime, owner = self._ready(context)
        final_length = await runtime.registry.close(request.session_id, owner=owner)
        return pb.CloseSessionResponse(final_history_length=final_length)

    @unary
    async def GetSessionInfo(self, request: pb.GetSessionInfoRequest, context) -> pb.GetSessionInfoResponse:
        runtime, owner = self._ready(context)
        session = runtime.registry.get(request.session_id, owner)
        return reply_of(pb.GetSessionInfoResponse, session_values(session))

    @unary
    async def GetRuntimeInfo(self, request: pb.GetRuntimeInfoRequest, context) -> pb.GetRuntimeInfoResponse:
        return reply_of(pb.GetRuntimeInfoResponse, self._ready(context)[0].info())

    @unary
    async def ListSessions(self, request: pb.ListSessionsRequest, context) -> pb.ListSessionsResponse:
        runtime, owner = self._ready(context)
        return pb.ListSessionsResponse(sessions=[_summary(s) for s in runtime.registry.owned_by(owner)])

    @unary
    async def ForkSession(self, request: pb.ForkSessionRequest, context) -> pb.ForkSessionResponse:
        runtime, owner = self._ready(context)
        label = request.client_label if request.HasField("client_label") else None
        new_id = await runtime.registry.fork(request.session_id, owner, label)
        return pb.ForkSessionResponse(session_id=new_id,
                                      history_length=runtime.registry.get(new_id).snapshot.history_length)

    async def ExportSession(self, request: pb.ExportSessionRequest, context) -> AsyncIterator[pb.SessionChunk]:
        started, code = _begin("ExportSession", request), grpc.StatusCode.OK
        try:
            _check_parsed(request)
            runtime, owner = self._ready(context)
            session = runtime.registry.get(request.session_id, owner)
            reply = _future()
            session.send(Export(reply))
            chunks = export_chunks(runtime, session, await reply)
        except Exception as exc:  # noqa: BLE001 - every error leaves through the table
            code = status_of(exc)
            await _abort(context, exc, "ExportSession")
        finally:
            _log_outcome(started, code)
        for chunk in chunks:
            yield chunk

    @unary
    async def ImportSession(self, request_iterator, context) -> pb.ImportSessionResponse:
        runtime, owner = self._ready(context)
        got = await read_import(runtime, request_iterator)
        new_id = await runtime.registry.adopt(got.state, got.image, got.client_label, got.eos_token_ids, owner)
        return pb.ImportSessionResponse(session_id=new_id, history_length=len(got.state.history))


Reply = TypeVar("Reply", pb.GetSessionInfoResponse, pb.GetRuntimeInfoResponse)
# Snapshot fields named otherwise on the wire, where the invariant counters share GetRuntimeInfo's names.
WIRE_NAME_OF_SNAPSHOT_FIELD = {"inv1_violations": "cache_invariant_inv1_violations",
                               "inv2_violations": "cache_invariant_inv2_violations"}


def session_values(session: SessionActor) -> dict[str, object]:
    """What GetSessionInfo reports, keyed by wire name: every snapshot field, then what the actor
    itself holds. A snapshot field without a proto field (or the reverse) fails in reply_of."""
    snap = session.snapshot
    values: dict[str, object] = {WIRE_NAME_OF_SNAPSHOT_FIELD.get(field.name, field.name): getattr(snap, field.name)
                                 for field in dataclasses.fields(snap)}
    values.update(idle_seconds=session.idle_seconds, client_label=session.client_label,
                  eos_token_ids=sorted(session.eos_token_ids))
    return values


def _summary(session: SessionActor) -> pb.SessionSummary:
    snap = session.snapshot
    return pb.SessionSummary(session_id=session.session_id, client_label=session.client_label,
                             history_length=snap.history_length, kv_live_bytes=snap.kv_live_bytes,
                             idle_seconds=session.idle_seconds, busy=not session.is_idle)


@functools.cache
def _field_names(message_type: type) -> frozenset[str]:
    return frozenset(field.name for field in message_type.DESCRIPTOR.fields)


def reply_of(message_type: type[Reply], values: Mapping[str, object]) -> Reply:
    """The reply with one value per field, from `values` keyed by field name. The proto is the one
    list of fields, and the message constructor would quietly default a missing one: a key set that
    differs from the proto's is a runtime bug, answered INTERNAL rather than with made-up zeros."""
    names = _field_names(message_type)
    missing, extra = names - values.keys(), values.keys() - names
    if missing or extra:
        raise TypeError(f"{message_type.__name__}: no value for {sorted(missing)}; not fields: {sorted(extra)}")
    return message_type(**values)


def _check_parsed(request) -> None:
    if isinstance(request, MalformedRequest):
        raise InvalidRequest(f"malformed {request.type_name}: {request.reason}")


def _future() -> asyncio.Future:
    return asyncio.get_running_loop().create_future()


def _check_ids(ids, vocab_size: int, field: str) -> None:
    for token in ids:
        if token >= vocab_size:
            raise InvalidRequest(f"{field}: token id {token} is outside the vocabulary [0, {vocab_size})")


def _message_sizes(request: pb.GenerateRequest) -> tuple[int, int]:
    """(most, fewest) tokens a message, 0 read as 1."""
    limit, minimum = max(1, request.max_tokens_per_message), max(1, request.min_tokens_per_message)
    if minimum > limit:
        raise InvalidRequest(f"min_tokens_per_message ({minimum}) exceeds max_tokens_per_message ({limit})")
    return limit, minimum


def _sampling(request: pb.GenerateRequest) -> SamplingParams:
    return SamplingParams(
        temperature=request.temperature if request.HasField("temperature") else 0.0,
        top_p=request.top_p if request.HasField("top_p") else 1.0,
        top_k=request.top_k if request.HasField("top_k") else 0,
        seed=request.seed if request.HasField("seed") else None,
    )
