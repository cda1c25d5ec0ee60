"""A GGUF model's converted weights kept on disk, so the next start skips the conversion.

Loading a GGUF file goes through transformers' converter: it parses the file's header (on the
embedded model a 49k-token vocabulary, field by field) and dequantizes every tensor in Python.
That is most of a start-up, and it is repeated by every `kakeya serve` and every engine process.
The converted model is plain tensors: written once as safetensors next to its config, it loads
back with the same bits in a fraction of the time.

An entry is keyed by the file (real path, size, modification time), the dtype it was converted to
and the transformers version that converted it; a changed file or a new transformers makes a new
entry. Entries are written to a temporary directory and renamed into place, so a reader never sees
half an entry, and two processes converting at once both succeed. A cache that cannot be read or
written costs only the time it would have saved: the model loads from the GGUF file and a
warning says why. The cache keeps the KEEP_ENTRIES entries used last, skips models whose
converted weights exceed MAX_ENTRY_BYTES, and writes nothing that would leave its disk with less
than FREE_RESERVE_BYTES free (durable sessions may share that disk).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pathlib
import shutil
import time

import structlog
import torch
import transformers
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM

log = structlog.get_logger(__name__)

FORMAT = 1
KEEP_ENTRIES = 4
MAX_ENTRY_BYTES = 4 << 30
FREE_RESERVE_BYTES = 2 << 30  # an entry is not written where it would leave less free than this
_FACTS = "kakeya.json"
_WEIGHTS = "model.safetensors"


def entry_dir(cache_dir: str, path: pathlib.Path, dtype: torch.dtype) -> pathlib.Path:
    stat = path.stat()
    key = json.dumps([FORMAT, os.path.realpath(path), stat.st_size, stat.st_mtime_ns, str(dtype),
                      transformers.__version__])
    return pathlib.Path(cache_dir) / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def load(cache_dir: str, path: pathlib.Path, dtype: torch.dtype, attn_implementation: str):
    """(model, facts) from the entry for this file and dtype, or None where there is none or it
    cannot be read (then it is removed, to be written again)."""
    entry = entry_dir(cache_dir, path, dtype)
    if not (entry / _FACTS).is_file():
        return None
    try:
        facts = json.loads((entry / _FACTS).read_text())
        model = AutoModelForCausalLM.from_pretrained(str(entry), dtype=dtype, attn_implementation=attn_implementation)
    except Exception as exc:  # noqa: BLE001 - a damaged entry is a cache miss, never a failed start
        log.warning("model_cache_unreadable", entry=str(entry), error=f"{type(exc).__name__}: {exc}")
        shutil.rmtree(entry, ignore_errors=True)
        return None
    try:
        os.utime(entry / _FACTS)  # last use, for eviction
    except OSError:
        pass  # a read-only cache still serves
    return model, facts


def store(cache_dir: str, path: pathlib.Path, dtype: torch.dtype, model: torch.nn.Module, facts: dict) -> bool:
    """Writes the entry for this file and dtype; False (with a warning) where it cannot."""
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}  # tied weights count once
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    if size > MAX_ENTRY_BYTES:
        log.info("model_cache_skipped", reason=f"converted weights of {size} bytes exceed {MAX_ENTRY_BYTES}")
        return False
    entry = entry_dir(cache_dir, path, dtype)
    staging = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        free = shutil.disk_usage(_existing(entry.parent)).free
        if free < size + FREE_RESERVE_BYTES:
            log.warning("model_cache_not_written", cache_dir=cache_dir,
                        error=f"{free} bytes free, {size} needed plus {FREE_RESERVE_BYTES} kept free")
            return False
        _write(staging, model, facts)
        try:
            os.rename(staging, entry)
        except OSError:
            if not (entry / _FACTS).is_file():  # not another process's finished entry: a real failure
                raise
        _evict(entry.parent)
    except Exception as exc:  # noqa: BLE001 - a cache that cannot be written only costs the next start time
        log.warning("model_cache_not_written", cache_dir=cache_dir, error=f"{type(exc).__name__}: {exc}")
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def _existing(directory: pathlib.Path) -> pathlib.Path:
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def _write(staging: pathlib.Path, model: torch.nn.Module, facts: dict) -> None:
    staging.mkdir(parents=True)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):  # the GGUF marker: the entry holds plain tensors
        del config.quantization_config
    config.save_pretrained(staging)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(staging)
    save_model(model, str(staging / _WEIGHTS))  # tied weights stored once
    (staging / _FACTS).write_text(json.dumps(facts))  # last: its presence marks a whole entry


def _evict(cache_dir: pathlib.Path) -> None:
    """Other processes may evict at the same time: an entry gone meanwhile is simply skipped."""
    entries = [e for e in cache_dir.iterdir() if (e / _FACTS).is_file()]
    entries.sort(key=lambda e: _mtime(e / _FACTS), reverse=True)
    for stale in entries[KEEP_ENTRIES:]:
        shutil.rmtree(stale, ignore_errors=True)
    for leftover in cache_dir.glob(".*.tmp"):  # a writer that died mid-entry, an hour ago or more
        if time.time() - _mtime(leftover) > 3600:
            shutil.rmtree(leftover, ignore_errors=True)


def _mtime(path: pathlib.Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
