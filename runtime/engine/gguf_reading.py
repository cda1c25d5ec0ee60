"""One parse of a GGUF file per load.

transformers reads a GGUF file's header twice while loading (once for the config, once for the
weights), and builds gguf's tensor-name table once per module of the model; the runtime reads the
header a third time for the tensor types. On the embedded model each header parse walks a 49k-token
vocabulary field by field, so these repeats were most of a start-up. While `shared_reading()` is
entered, `gguf.GGUFReader` hands out one reader per file and the name table is built once per
architecture and depth. The reader is read-only (a memory map), so sharing it changes nothing that
is read.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator

_lock = threading.Lock()  # the patch is process-wide: one load at a time may hold it


@contextlib.contextmanager
def shared_reading() -> Iterator[None]:
    try:
        import gguf
    except ImportError:  # no GGUF support installed: nothing to share
        yield
        return
    with _lock:
        reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
        readers: dict[tuple[str, str], object] = {}

        def reader(path: os.PathLike[str] | str, mode: str = "r"):
            key = (os.path.realpath(path), mode)
            if key not in readers:
                readers[key] = reader_class(path, mode)
            return readers[key]

        gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(name_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map
