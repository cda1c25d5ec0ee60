"""Starts real runtimes on the embedded model for tests, and drives them over real gRPC."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from dataclasses import dataclass

import grpc
import torch

from kakeya.proto.v1 import runtime_pb2 as pb
from kakeya.proto.v1 import runtime_pb2_grpc
from kakeya.runtime.common.config import EngineConfig, RuntimeConfig, ServerConfig, SessionLimits, SpeculativeConfig
from kakeya.runtime.forward.loaded_model import LoadedModel
from kakeya.runtime.server.host import Host
from kakeya.runtime.server.server import RuntimeServer

# Every await in a test is bounded: actor bugs hang rather than fail.
TIMEOUT_S = 120.0


@dataclass
class ServerHandle:
    server: RuntimeServer
    runtime: Host
    channel: grpc.aio.Channel
    stub: runtime_pb2_grpc.RuntimeServiceStub

    async def stop(self) -> None:
        await self.channel.close()
        await asyncio.wait_for(self.server.stop(0), TIMEOUT_S)


def runtime_config(engine: dict | None = None, limits: dict | None = None, server: dict | None = None,
                   speculative: dict | None = None) -> RuntimeConfig:
    return RuntimeConfig(
        engine=dataclasses.replace(EngineConfig(kv_budget_bytes=2 * 1024**3), **(engine or {})),
        limits=dataclasses.replace(SessionLimits(), **(limits or {})),
        server=dataclasses.replace(ServerConfig(host="127.0.0.1", port=0), **(server or {})),
        speculative=SpeculativeConfig(**(speculative or {})),
    )


async def start_server(loaded: LoadedModel, engine: dict | None = None, limits: dict | None = None,
                       server: dict | None = None, speculative: dict | None = None,
                       draft: LoadedModel | None = None) -> ServerHandle:
    """A runtime on `loaded`; `draft` (with speculative mode "draft") is its draft model as loaded."""
    config = runtime_config(engine, limits, server, speculative)
    server = RuntimeServer(config)
    address = await server.start()
    runtime = Host(config, loaded, on_engine_death=lambda exc: None, draft=draft)
    await server.attach(runtime)
    channel = grpc.aio.insecure_channel(address)
    return ServerHandle(server, runtime, channel, runtime_pb2_grpc.RuntimeServiceStub(channel))


def reference_model(loaded: LoadedModel) -> torch.nn.Module:
    """A copy of the served model on transformers' own attention, for exactness baselines."""
    model = copy.deepcopy(loaded.model)
    model.set_attn_implementation("sdpa")
    return model


def reference_greedy(model: torch.nn.Module, prompt: list[int], max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


@dataclass
class Generation:
    tokens: list[int]
    done: pb.GenerateDone
    truncated: list[int]  # dropped_token_count of each HistoryTruncated event
    order: list[str]  # "token" / "tokens" (several in one message) / "done" / "truncated" in arrival order
    message_sizes: list[int] = dataclasses.field(default_factory=list)  # tokens in each token message


async def create(stub, label: str = "", eos: tuple[int, ...] = (), default_eos: bool = False) -> str:
    """A session that stops at `eos` only. The tests compare streams of max_tokens tokens with
    references that never stop, so, unlike a client, they opt out of the model's EOS ids unless
    `default_eos` asks for them."""
    request = pb.CreateSessionRequest(client_label=label, eos_token_ids=eos, no_default_eos=not default_eos)
    reply = await stub.CreateSession(request, timeout=TIMEOUT_S)
    return reply.session_id


async def append(stub, session_id: str, tokens) -> int:
    reply = await stub.AppendTokens(pb.AppendTokensRequest(session_id=session_id, token_ids=list(tokens)),
                                    timeout=TIMEOUT_S)
    return reply.history_length


async def generate(stub, session_id: str, max_tokens: int, **sampling) -> Generation:
    result = Generation([], pb.GenerateDone(), [], [])

    async def consume() -> None:
        call = stub.Generate(pb.GenerateRequest(session_id=session_id, max_tokens=max_tokens, **sampling))
        async for response in call:
            kind = response.WhichOneof("payload")
            result.order.append({"token_id": "token", "tokens": "tokens", "done": "done", "truncated": "truncated"}[kind])
            if kind == "token_id":
                result.tokens.append(response.token_id)
                result.message_sizes.append(1)
            elif kind == "tokens":
                result.tokens.extend(response.tokens.token_ids)
                result.message_sizes.append(len(response.tokens.token_ids))
            elif kind == "done":
                result.done = response.done
            else:
                result.truncated.append(response.truncated.dropped_token_count)

    await asyncio.wait_for(consume(), TIMEOUT_S)
    return result


async def info(stub, session_id: str) -> pb.GetSessionInfoResponse:
    return await stub.GetSessionInfo(pb.GetSessionInfoRequest(session_id=session_id), timeout=TIMEOUT_S)


async def close(stub, session_id: str) -> int:
    reply = await stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=TIMEOUT_S)
    return reply.final_history_length


async def status_of(awaitable) -> grpc.StatusCode:
    """The status code a call fails with (OK if it succeeds)."""
    try:
        await asyncio.wait_for(awaitable, TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def eventually(predicate, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Waits for a server-side state change that follows a client action asynchronously."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
