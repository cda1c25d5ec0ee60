"""Every family the generic path serves, against transformers' own greedy tokens (fp32, CPU).

Sessions of one model are prefilled in different chunkings and decoded together in one batched
forward per step, as the scheduler runs them; each one's stream must equal transformers'
`generate` on the same weights.
"""

from __future__ import annotations

import pytest

from cuda_models import run_sessions
from family_models import FAMILIES, generate, load_family
from kakeya.runtime.engine.runner import ModelRunner
from tiny_models import make_pool, prompt

COUNT = 12
SPLITS = ([23], [5, 11, 7], [1, 22], [16, 7])  # every session's prompt is 23 tokens, past the window


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return load_family(request.param)


def test_batched_chunked_sessions_match_transformers(family):
    loaded, reference = family
    prompts = [prompt(23, seed) for seed in range(len(SPLITS))]
    runner = ModelRunner(loaded, deterministic=False)
    try:
        streams = run_sessions(runner, make_pool(loaded), prompts, COUNT, split=lambda i: SPLITS[i])
    finally:
        runner.shutdown()
    assert streams == [generate(reference, p, COUNT) for p in prompts], loaded.architecture
