"""Greedy streams equal transformers `generate`, and batching carries many sessions per forward."""

from __future__ import annotations

import asyncio

import pytest

from .harness import append, close, create, generate, reference_greedy, reference_model

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain recursion to a child.",
    "List three prime numbers.",
    "How do I reverse a list in Python?",
    "Why is the sky blue?",
    "Give me a synonym for happy.",
    "Translate 'good morning' into Spanish.",
    "What does a compiler do?",
    "Summarise the plot of Hamlet in one sentence.",
]


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False) for q in QUESTIONS]


@pytest.fixture(scope="module")
def references(loaded_model, prompts):
    model = reference_model(loaded_model)
    return [reference_greedy(model, prompt, 40) for prompt in prompts]


async def _run(stub, prompt: list[int], max_tokens: int) -> list[int]:
    session_id = await create(stub)
    try:
        await append(stub, session_id, prompt)
        return (await generate(stub, session_id, max_tokens)).tokens
    finally:
        await close(stub, session_id)


async def test_greedy_equals_transformers_generate(stub, server, prompts, references):
    """10 prompts x 40 tokens, all generated concurrently (batched), vs `generate` one at a time."""
    stats = server.runtime.scheduler.stats
    forwards, sessions = stats.num_forwards, stats.total_sessions
    streams = await asyncio.gather(*(_run(stub, prompt, 40) for prompt in prompts))
    for question, stream, reference in zip(QUESTIONS, streams, references):
        assert stream == reference, question
    assert (stats.total_sessions - sessions) / (stats.num_forwards - forwards) > 5


async def test_batched_sessions_get_their_solo_tokens(stub, server, prompts):
    """8 sessions at once produce exactly what each produces alone, and forwards really carry several."""
    solo = [await _run(stub, prompt, 24) for prompt in prompts[:8]]
    stats = server.runtime.scheduler.stats
    forwards, sessions = stats.num_forwards, stats.total_sessions
    together = await asyncio.gather(*(_run(stub, prompt, 24) for prompt in prompts[:8]))
    assert together == solo
    mean = (stats.total_sessions - sessions) / (stats.num_forwards - forwards)
    assert mean > 4 and stats.max_sessions_per_forward >= 8
