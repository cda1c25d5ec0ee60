"""CUDA C++ kernels of the runtime (runtime/kernels/*.cu), compiled at run time with NVRTC.

NVRTC comes through `torch.cuda._compile_kernel` (torch 2.8 and later), so the package ships
sources, not binaries, and needs no compiler at install time. Where that API is missing, the
device is older than the kernel needs, or the compile fails, `kernel` returns None with the
reason logged once, and the caller keeps its Triton kernel.

NVRTC compiles one string and has no include path to search, so `source_text` does the includes:
a line `#include "NAME.cuh"` of a kernel source becomes the text of that header beside it (one
level deep), between #line markers that keep compile errors pointing at the right file and line.
"""

from __future__ import annotations

import functools
import pathlib
import re

import structlog
import torch

log = structlog.get_logger(__name__)

# fp8 (e4m3) conversions and the mma.sync shapes the kernels use
MIN_CAPABILITY = (8, 9)
# Off: every caller takes its Triton kernel. Benchmarks switch it to time both in one run; read
# when a step's kernels are chosen (graphs capture the choice).
ENABLED = True
FOLDER = pathlib.Path(__file__).parent
_INCLUDE = re.compile(r'^#include "(\w+\.cuh)"[ \t]*$', re.MULTILINE)


def kernel(source: str, entry: str, device_index: int | None, shared_mem: int = 0):
    """`entry` of runtime/kernels/`source`, compiled for this device, or None when it cannot run here.
    Compiled once a device and entry (about a second), on the first step that needs it: the
    warm-up forward before graph capture. shared_mem: dynamic shared memory of every launch,
    configured once here (above 48 KiB it must be)."""
    return _compiled(source, entry, device_index, shared_mem) if ENABLED else None


@functools.cache
def _compiled(source: str, entry: str, device_index: int | None, shared_mem: int):
    if torch.cuda.get_device_capability(device_index) < MIN_CAPABILITY:
        return None  # fp8 slabs are refused there anyway
    compile_kernel = getattr(torch.cuda, "_compile_kernel", None)
    if compile_kernel is None:
        log.info("cuda_kernel_unavailable", entry=entry,
                 reason=f"torch {torch.__version__} has no torch.cuda._compile_kernel")
        return None
    text = source_text(source)
    try:
        with torch.cuda.device(device_index):
            compiled = compile_kernel(text, entry, nvcc_options=["--use_fast_math", "-std=c++17"])
            if shared_mem >= 48 * 1024:
                compiled.set_shared_memory_config(shared_mem)
            return compiled
    except Exception as exc:  # noqa: BLE001 - any failure leaves the Triton kernel in place
        log.warning("cuda_kernel_unavailable", entry=entry, reason=f"{type(exc).__name__}: {exc}"[:500])
        return None


def source_text(source: str) -> str:
    """runtime/kernels/`source` as NVRTC compiles it: each of its `#include "NAME.cuh"` lines
    replaced by that header's text (see the module docstring)."""
    text = (FOLDER / source).read_text()

    def header(match: re.Match) -> str:
        after = text.count("\n", 0, match.end()) + 2  # the line below the include, counted from 1
        body = (FOLDER / match.group(1)).read_text()
        return f'#line 1 "{match.group(1)}"\n{body.rstrip()}\n#line {after} "{source}"'

    return _INCLUDE.sub(header, text)
