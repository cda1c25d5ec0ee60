"""A real runtime on a tiny randomly-initialised Llama, driven through the registry and session actors.

The pieces are assembled exactly as the server assembles them (runtime/server/host.py): KV pool,
model runner on its own thread, scheduler actor, session rules and registry. Tests talk to it only
with the messages a client request becomes (Append, Generate with a TokenStream, Close), and
compare what comes back with greedy decoding of the plain transformers model holding the same
weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass, field
from typing import AsyncIterator, Sequence

import torch

from kakeya.actors.messages import Append, Generate, GenerateParams
from kakeya.actors.session import SessionActor
from kakeya.actors.token_stream import Done, TokenStream
from kakeya.runtime.common.config import EngineConfig, RuntimeConfig, SessionLimits, SpeculativeConfig
from kakeya.runtime.engine.sampler import SamplingParams
from kakeya.runtime.forward.loaded_model import LoadedModel
from kakeya.runtime.server.host import Host
from tiny_models import load_tiny, prompt  # noqa: F401 - prompt is re-exported for the tests

TIMEOUT_S = 20.0  # a bound on every wait; a healthy test finishes each wait in milliseconds
BYTES_PER_TOKEN = 2 * 2 * 2 * 16 * 4  # tiny Llama: layers * (K, V) * kv heads * head dim * fp32

@dataclass
class Tiny:
    """The engine's model and an identical plain transformers model, the oracle for greedy streams."""

    loaded: LoadedModel
    reference: torch.nn.Module
    _solo: dict[tuple[tuple[int, ...], int], list[int]] = field(default_factory=dict)

    def solo(self, tokens: Sequence[int], count: int) -> list[int]:
        """The greedy continuation of `tokens`, `count` tokens long, from the plain model alone."""
        key = (tuple(tokens), count)
        if key not in self._solo:
            self.reference.generation_config.eos_token_id = None  # generate all of them
            with torch.no_grad():
                out = self.reference.generate(torch.tensor([list(tokens)]), max_new_tokens=count,
                                              do_sample=False, pad_token_id=0)
            self._solo[key] = out[0, len(tokens):].tolist()
        return list(self._solo[key])


@functools.cache
def load() -> Tiny:
    return Tiny(*load_tiny("llama"))


@dataclass
class Stack:
    runtime: Host
    crashes: list[BaseException]

    @property
    def registry(self):
        return self.runtime.registry

    @property
    def scheduler(self):
        return self.runtime.scheduler

    @property
    def pool(self):
        return self.runtime.pool

    @property
    def runner(self):
        return self.runtime.runner


@contextlib.asynccontextmanager
async def started(tiny: Tiny, *, limits: SessionLimits | None = None, speculative: str = "none",
                  **engine: object) -> AsyncIterator[Stack]:
    """A started runtime; on exit every session is closed, the scheduler stopped, the model thread shut.

    Small chunks by default, so prompts are prefilled over several steps next to decoding rows.
    """
    engine = {"prefill_chunk_tokens": 8, "max_step_tokens": 32, "kv_block_tokens": 16, **engine}
    config = RuntimeConfig(engine=EngineConfig(**engine), limits=limits or SessionLimits(),
                           speculative=SpeculativeConfig(mode=speculative, num_draft_tokens=3))
    crashes: list[BaseException] = []
    runtime = Host(config, tiny.loaded, on_engine_death=crashes.append)
    runtime.start()
    try:
        yield Stack(runtime, crashes)
    finally:
        runtime.runner.fault_gate = None
        runtime.runner.fault_error = None
        try:
            await asyncio.wait_for(runtime.registry.close_all(), TIMEOUT_S)
            await asyncio.wait_for(runtime.scheduler.stop(), TIMEOUT_S)
        finally:
            runtime.runner.shutdown()


async def open_session(stack: Stack, tokens: Sequence[int] = (), eos: frozenset[int] = frozenset()
                       ) -> SessionActor:
    session_id = await asyncio.wait_for(stack.registry.create("test", eos), TIMEOUT_S)
    session = stack.registry.get(session_id)
    if tokens:
        await append(session, tokens)
    return session


def send_append(session: SessionActor, tokens: Sequence[int]) -> asyncio.Future[int]:
    reply = asyncio.get_running_loop().create_future()
    session.send(Append(tuple(tokens), reply))
    return reply


async def append(session: SessionActor, tokens: Sequence[int]) -> int:
    """Appends and returns the history length the session reports."""
    return await asyncio.wait_for(send_append(session, tokens), TIMEOUT_S)


def generate(session: SessionActor, max_tokens: int, sampling: SamplingParams | None = None) -> TokenStream:
    stream = TokenStream()
    session.send(Generate(GenerateParams(max_tokens, sampling or SamplingParams()), stream))
    return stream


class CancelAfter(TokenStream):
    """A consumer that cancels the moment its n-th token arrives, before the next step is planned."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.seen = 0

    def push(self, event) -> None:
        super().push(event)
        if isinstance(event, int):
            self.seen += 1
            if self.seen == self.n:
                self.cancel()


async def collect(stream: TokenStream) -> tuple[list[int], Done]:
    """Every token of the stream and its Done; raises what the stream failed with."""

    async def read() -> tuple[list[int], Done]:
        tokens: list[int] = []
        async for event in stream:
            if isinstance(event, int):
                tokens.append(event)
            elif isinstance(event, Done):
                return tokens, event
        raise AssertionError("the stream ended without Done")

    return await asyncio.wait_for(read(), TIMEOUT_S)


async def next_token(events: AsyncIterator[object]) -> int:
    event = await asyncio.wait_for(anext(events), TIMEOUT_S)
    assert isinstance(event, int), event
    return event


def assert_clean(stack: Stack) -> None:
    """After every session closed: no KV held, nothing running, no invariant broken, no crash."""
    info = stack.runtime.info()
    assert info["active_sessions"] == 0
    assert stack.pool.used_bytes == 0
    assert stack.pool.num_slabs == 0
    assert stack.scheduler.num_running == 0
    assert info["cache_invariant_inv1_violations"] == 0
    assert info["cache_invariant_inv2_violations"] == 0
    assert stack.crashes == []
