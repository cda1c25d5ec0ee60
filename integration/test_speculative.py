"""Speculative decoding over gRPC on the embedded model: greedy streams equal plain greedy.

Deterministic mode (the CPU default) makes every row's logits independent of the batch, so a
verified stream must be identical to the plain runtime's, token for token, for n-gram drafts
and for a draft model, with many sessions verifying in the same forwards. Rejected draft rows
are rolled back: INV-1 is checked by every Generate, and its violation counter must stay 0.
"""

from __future__ import annotations

import asyncio

import pytest

from kakeya.proto.v1 import runtime_pb2 as pb

from .harness import TIMEOUT_S, append, close, create, generate, info, start_server

MAX_TOKENS = 80

CODE = [
    ("merge", "combine", "def merge(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n"
     "        if a[i] <= b[j]:\n            out.append(a[i])\n            i += 1\n        else:\n"
     "            out.append(b[j])\n            j += 1\n    return out + a[i:] + b[j:]\n"),
    ("total", "amount", "def invoice(items):\n    total = 0\n    for name, price, qty in items:\n"
     "        total += price * qty\n        print(f\"{name}: {price * qty:.2f}\")\n    return total\n"),
    ("node", "item", "class Stack:\n    def __init__(self):\n        self.node = None\n\n    def push(self, value):\n"
     "        self.node = (value, self.node)\n\n    def pop(self):\n        value, self.node = self.node\n"
     "        return value\n"),
    ("fib", "fibonacci", "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
     "    return a\n\nprint([fib(i) for i in range(10)])\n"),
    ("path", "location", "import os\n\ndef walk(path):\n    for root, dirs, files in os.walk(path):\n"
     "        for name in files:\n            yield os.path.join(root, name)\n"),
]
TOOL_OUTPUTS = [
    ("ls -la", "total 24\ndrwxr-xr-x  4 dev dev 4096 Mar  3 10:12 .\ndrwxr-xr-x 18 dev dev 4096 Mar  3 09:58 ..\n"
     "-rw-r--r--  1 dev dev  812 Mar  3 10:12 main.py\n-rw-r--r--  1 dev dev  233 Mar  3 10:01 README.md\n"),
    ("get_weather", '{"city": "Paris", "temperature_c": 18, "conditions": "cloudy", "wind_kph": 12}'),
    ("git status", "On branch main\nChanges not staged for commit:\n  modified:   src/app.py\n"
     "  modified:   tests/test_app.py\nUntracked files:\n  notes.txt\n"),
    ("search_docs", "1. Installing the package: run pip install example\n2. Configuration: edit config.toml\n"
     "3. Running tests: run pytest -q\n"),
    ("pytest", "collected 12 items\n\ntests/test_app.py ........F...\n\nFAILED tests/test_app.py::test_login - "
     "AssertionError: expected 200, got 401\n1 failed, 11 passed in 0.42s\n"),
]
QUESTIONS = [
    "What is the tallest mountain in the world?",
    "Write a short poem about autumn leaves.",
    "Explain what a hash table is.",
    "Give me three tips for better sleep.",
    "What causes rainbows?",
    "Describe a cat to someone who has never seen one.",
    "Why do we have seasons?",
    "Suggest a name for a bakery.",
    "What is photosynthesis?",
    "Tell me a fun fact about octopuses.",
]


def agent_messages() -> list[str]:
    code = [f"Here is my code:\n```python\n{src}```\nRepeat the code exactly, renaming `{old}` to `{new}`."
            for old, new, src in CODE]
    tools = [f"The tool `{tool}` returned:\n{out}\nCopy the tool output above verbatim." for tool, out in TOOL_OUTPUTS]
    return code + tools


@pytest.fixture(scope="module")
def prompts(tokenizer):
    """10 repetitive agent-style prompts, then 10 free chat ones."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": m}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False) for m in agent_messages() + QUESTIONS]


async def _run(stub, prompt: list[int], max_tokens: int = MAX_TOKENS, eos: tuple[int, ...] = (), **sampling):
    session_id = await create(stub, eos=eos)
    try:
        await append(stub, session_id, prompt)
        result = await generate(stub, session_id, max_tokens, **sampling)
        snapshot = await info(stub, session_id)
        assert snapshot.cache_invariant_inv1_violations == snapshot.cache_invariant_inv2_violations == 0
        # INV-1 as a client sees it: the slab holds the whole history but the last sampled token.
        assert snapshot.kv_resident_tokens == snapshot.history_length - 1
        return result
    finally:
        await close(stub, session_id)


async def _run_all(stub, prompts, **kwargs):
    return await asyncio.gather(*(_run(stub, prompt, **kwargs) for prompt in prompts))


@pytest.fixture(scope="module")
async def plain(server, prompts):
    """The reference: the runtime without speculation, all sessions concurrent too."""
    return [r.tokens for r in await _run_all(server.stub, prompts)]


@pytest.fixture(scope="module")
async def ngram_server(loaded_model):
    handle = await start_server(loaded_model, speculative={"mode": "ngram", "num_draft_tokens": 4})
    yield handle
    await handle.stop()


@pytest.fixture(scope="module")
async def draft_server(loaded_model):
    handle = await start_server(loaded_model, speculative={"mode": "draft", "draft_layers": 8,
                                                           "num_draft_tokens": 2})
    yield handle
    await handle.stop()


def _counter(handle, name: str, **labels) -> int:
    return handle.runtime.counter(name, **labels)


def _check_counts(handle, results, drafts_before: int, forwards_before: int) -> None:
    """Done counts add up to the metrics, and drafts of several sessions shared forwards."""
    drafted = sum(r.done.draft_token_count for r in results)
    accepted = sum(r.done.accepted_draft_token_count for r in results)
    assert _counter(handle, "kakeya_spec_decode_draft_tokens_total") == drafted
    assert _counter(handle, "kakeya_spec_decode_accepted_tokens_total") == accepted
    per_position = sum(_counter(handle, "kakeya_spec_decode_accepted_tokens_per_position_total", position=str(p))
                       for p in range(1, 5))
    assert per_position == accepted
    drafts = _counter(handle, "kakeya_spec_decode_drafts_total") - drafts_before
    forwards = handle.runtime.scheduler.stats.num_forwards - forwards_before
    assert drafts > 2 * forwards, "verification was not batched across sessions"
    for kind in ("inv1", "inv2"):
        assert _counter(handle, "kakeya_cache_invariant_violations_total", kind=kind) == 0
    assert handle.runtime.pool.used_bytes == 0 and handle.runtime.pool.num_slabs == 0


async def test_ngram_greedy_streams_equal_plain_greedy(ngram_server, prompts, plain):
    """20 prompts x 80 tokens, concurrent: identical streams, and drafts accepted on agent traffic."""
    results = await _run_all(ngram_server.stub, prompts)
    for index, (result, reference) in enumerate(zip(results, plain)):
        assert result.tokens == reference, f"prompt {index}"
        assert result.done.stop_reason == pb.GenerateDone.STOP_REASON_MAX_TOKENS
        assert result.done.accepted_draft_token_count <= result.done.draft_token_count
    agent = results[:10]
    assert sum(r.done.accepted_draft_token_count > 0 for r in agent) >= 8
    accepted = sum(r.done.accepted_draft_token_count for r in agent)
    assert accepted > 0.3 * MAX_TOKENS * len(agent), "echoed code should be mostly accepted"
    _check_counts(ngram_server, results, 0, 0)


async def test_draft_model_greedy_streams_equal_plain_greedy(draft_server, prompts, plain):
    """Six of the same prompts (three agent-style, three chat), 80 tokens each, with an 8-layer
    truncated copy of the model as the draft: the draft model's slabs and catch-up are the same
    code for every prompt, and each draft-model step costs eight more layers on the CPU."""
    picks = list(range(3)) + list(range(10, 13))
    results = await _run_all(draft_server.stub, [prompts[i] for i in picks])
    for index, result, reference in zip(picks, results, [plain[i] for i in picks]):
        assert result.tokens == reference, f"prompt {index}"
        assert result.done.draft_token_count > 0
    _check_counts(draft_server, results, 0, 0)


async def test_a_full_depth_draft_is_always_accepted(loaded_model, prompts, plain):
    """The model as its own draft: in deterministic mode every draft row equals the verifier's
    row bitwise, so every proposal is accepted (bonus tokens, draft slabs kept in step)."""
    handle = await start_server(loaded_model, speculative={"mode": "draft", "draft_model": "the model itself",
                                                           "num_draft_tokens": 4}, draft=loaded_model)
    try:
        results = await _run_all(handle.stub, prompts[:4], max_tokens=48)
        for result, reference in zip(results, plain):
            assert result.tokens == reference[:48]
            assert result.done.accepted_draft_token_count == result.done.draft_token_count > 30
    finally:
        await handle.stop()


async def test_eos_inside_an_accepted_draft_stops_and_rolls_back(ngram_server, server, prompts, plain):
    """A stop in the middle of the emitted tokens drops the rest and their KV; the next turn
    continues exactly as the plain runtime does."""
    prompt, reference = prompts[0], plain[0]
    eos = next(t for i, t in enumerate(reference) if i >= 20 and t not in reference[:i])
    cut = reference.index(eos) + 1

    async def two_turns(stub):
        session_id = await create(stub, eos=(eos,))
        try:
            await append(stub, session_id, prompt)
            first = await generate(stub, session_id, MAX_TOKENS)
            await append(stub, session_id, [28, 198])
            second = await generate(stub, session_id, 24)
            snapshot = await info(stub, session_id)
            assert snapshot.cache_invariant_inv1_violations == 0
            assert snapshot.kv_resident_tokens == snapshot.history_length - 1
            return first, second
        finally:
            await close(stub, session_id)

    (first, second), (plain_first, plain_second) = await asyncio.gather(two_turns(ngram_server.stub),
                                                                        two_turns(server.stub))
    assert first.tokens == plain_first.tokens == reference[:cut]
    assert first.done.stop_reason == pb.GenerateDone.STOP_REASON_EOS
    assert first.done.accepted_draft_token_count > 0
    assert second.tokens == plain_second.tokens


@pytest.mark.parametrize("mode", ["ngram", "draft"])
async def test_sampled_speculation_is_reproducible_with_a_seed(ngram_server, loaded_model, prompts, mode):
    """Rejection sampling draws from the request's seeded generator: the same seed, the same tokens."""
    handle = ngram_server
    if mode == "draft":
        handle = await start_server(loaded_model, speculative={"mode": "draft", "draft_layers": 8,
                                                               "num_draft_tokens": 2})
    try:
        picks = [prompts[5], prompts[12]]
        sampling = dict(temperature=0.8, top_p=0.95, seed=1234)
        first = await _run_all(handle.stub, picks, max_tokens=16, **sampling)
        second = await _run_all(handle.stub, picks, max_tokens=16, **sampling)
        assert [r.tokens for r in first] == [r.tokens for r in second]
        assert all(len(r.tokens) == 16 for r in first)
        assert sum(r.done.draft_token_count for r in first) > 0
        other = await _run(handle.stub, picks[0], max_tokens=16, temperature=0.8, top_p=0.95, seed=99)
        assert other.tokens != first[0].tokens
    finally:
        if handle is not ngram_server:
            await asyncio.wait_for(handle.stop(), TIMEOUT_S)


async def test_sdk_reports_the_mode_and_each_calls_draft_counts(ngram_server, prompts, plain):
    from kakeya import Client

    async with Client(ngram_server.server.address) as client:
        runtime = await asyncio.wait_for(client.runtime_info(), TIMEOUT_S)
        assert (runtime.speculative_mode, runtime.num_draft_tokens, runtime.draft_model_id) == ("ngram", 4, "")
        async with client.session(initial_tokens=prompts[1], default_eos=False) as session:
            stream = session.generate(32)
            tokens = await asyncio.wait_for(stream.collect(), TIMEOUT_S)
    assert tokens == plain[1][:32]
    assert stream.draft_token_count >= stream.accepted_draft_token_count > 0


async def test_tokens_of_one_step_share_a_message_when_the_request_allows(ngram_server, prompts, plain):
    """An accepted draft emits several tokens in one step. With max_tokens_per_message = 3 they
    reach the client as `tokens` messages of 2-3 ids, in order, the stream equal to plain greedy;
    the SDK, which asks for up to 64, yields the same ids one by one and counts them."""
    from kakeya import Client

    results = await _run_all(ngram_server.stub, prompts[:5], max_tokens_per_message=3)
    for result, expected in zip(results, plain[:5]):
        assert result.tokens == expected
        assert result.done.generated_token_count == len(result.tokens) == sum(result.message_sizes)
        assert result.order[-1] == "done" and "truncated" not in result.order
    sizes = [size for result in results for size in result.message_sizes]
    assert 2 <= max(sizes) <= 3, "no step's tokens were sent together, or too many were"
    for per_message in (1, 64):
        async with Client(ngram_server.server.address, max_tokens_per_message=per_message) as client:
            async with client.session(initial_tokens=prompts[0], default_eos=False) as session:
                stream = session.generate(MAX_TOKENS)
                tokens = await asyncio.wait_for(stream.collect(), TIMEOUT_S)
        assert tokens == plain[0] and stream.generated_token_count == MAX_TOKENS
