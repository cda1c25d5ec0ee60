"""INV-3: a history's greedy continuation is identical however the history was appended."""

from __future__ import annotations

import pytest

from .harness import append, close, create, generate, start_server

MIXED_CHUNKS = [5, 1, 16, 2, 7, 33, 3]
HISTORIES = [
    list(range(1000, 1060)),
    [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11, 2] * 4,
    [42, 17, 99, 3000, 12, 12, 8, 1500, 640, 77, 5, 901] * 6,
]


def _chunks(tokens: list[int], sizes: list[int]):
    start, index = 0, 0
    while start < len(tokens):
        size = sizes[index % len(sizes)]
        yield tokens[start:start + size]
        start, index = start + size, index + 1


async def _continue(stub, pieces, turns: int = 0, max_tokens: int = 24):
    """Appends pieces (generating `turns` short turns between the first ones), then generates."""
    session_id = await create(stub)
    history = []
    try:
        for index, piece in enumerate(pieces):
            history += piece
            await append(stub, session_id, piece)
            if index < turns:
                history += (await generate(stub, session_id, 6)).tokens
        final = await generate(stub, session_id, max_tokens)
        return history, final
    finally:
        await close(stub, session_id)


async def _check_patterns(stub, base: list[int]) -> list:
    """Builds a history across two Generate turns, then re-appends it in three other patterns."""
    third = len(base) // 3
    history, by_turns = await _continue(stub, [base[:third], base[third:2 * third], base[2 * third:]], turns=2)
    results = [by_turns]
    results.append((await _continue(stub, [history]))[1])
    results.append((await _continue(stub, [[t] for t in history]))[1])
    results.append((await _continue(stub, list(_chunks(history, MIXED_CHUNKS))))[1])
    streams = [r.tokens for r in results]
    assert all(s == streams[0] for s in streams), streams
    return results


@pytest.mark.parametrize("base", HISTORIES, ids=["counting", "repeated-chat", "mixed"])
async def test_append_pattern_does_not_change_the_stream(stub, base):
    await _check_patterns(stub, base)


async def test_bounded_mode_is_deterministic_across_the_trim_point(loaded_model):
    """Sink 4 + window 48 with 16-token prefill chunks; histories of ~150 tokens cross the trim point."""
    sink, window = 4, 48
    handle = await start_server(loaded_model, engine={"sink_tokens": sink, "window_tokens": window,
                                                      "prefill_chunk_tokens": 16})
    try:
        base = HISTORIES[2] * 2  # 144 tokens
        results = await _check_patterns(handle.stub, base)
        one_append = results[1]
        history_length = len(base) + 12
        assert one_append.truncated == [history_length - window - sink]
        assert one_append.order[0] == "truncated" and one_append.order.count("truncated") == 1
        runtime = handle.runtime
        assert runtime.pool.used_bytes == 0
        # Continuing past the window keeps reporting only the newly dropped tokens.
        session_id = await create(handle.stub)
        await append(handle.stub, session_id, base)
        first = await generate(handle.stub, session_id, 40)
        second = await generate(handle.stub, session_id, 4)
        assert first.truncated == [len(base) - window - sink] and second.truncated == [40]
        # Past the slab's capacity, compaction drops what no query can see; the slab never grows.
        third = await generate(handle.stub, session_id, 100)
        assert third.truncated == [4] and len(third.tokens) == 100
        [kv] = runtime.pool.sessions()
        assert kv.num_positions == len(base) + 143 and kv.num_evicted > 0
        assert kv.capacity == runtime.pool.bounded_capacity and kv.num_resident <= kv.capacity
        await close(handle.stub, session_id)
    finally:
        await handle.stop()
