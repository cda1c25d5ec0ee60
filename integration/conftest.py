"""One embedded model per test run, shared by every runtime the tests start."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile

import pytest

from kakeya.runtime.engine.attention_hook import ATTENTION_NAME
from kakeya.runtime.common.config import ModelConfig
from kakeya.runtime.engine.loader import embedded_model_path, load_model

from .harness import TIMEOUT_S, eventually, start_server

# One converted-weights cache for this run, shared by every runtime, engine process and `kakeya
# serve` the tests start: the embedded model is converted once, then loaded from the cache.
_MODEL_CACHE = tempfile.mkdtemp(prefix="kakeya-model-cache-")
os.environ["KAKEYA_MODEL_CACHE_DIR"] = _MODEL_CACHE
atexit.register(shutil.rmtree, _MODEL_CACHE, True)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
async def loaded_model():
    return await asyncio.wait_for(asyncio.to_thread(load_model, ModelConfig(), ATTENTION_NAME), 600)


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    path = embedded_model_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="session")
async def server(loaded_model):
    handle = await start_server(loaded_model)
    yield handle
    await handle.stop()


@pytest.fixture
def stub(server):
    return server.stub


@pytest.fixture(autouse=True)
async def no_leaks(request):
    """After each test on the shared server: no sessions, no running work, no KV bytes held."""
    yield
    if "server" not in request.fixturenames:
        return
    runtime = request.getfixturevalue("server").runtime
    # A cancelled stream is dropped by the scheduler within one step, asynchronously.
    await eventually(lambda: runtime.scheduler.num_running == 0, TIMEOUT_S, "the scheduler to drain")
    assert runtime.registry.num_active == 0, "a test left sessions open"
    assert runtime.pool.used_bytes == 0, "KV bytes were not returned"
    assert runtime.pool.num_slabs == 0
