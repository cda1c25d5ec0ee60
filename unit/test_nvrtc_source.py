"""The text NVRTC compiles: a kernel's `#include "common.cuh"` line becomes the header's text.

Runs without a GPU: only the source assembly is checked here; the compiled kernels are tested
against the Triton ones on the GPU machine (test_cuda_row_fp8.py, test_cuda_block_fp8.py).
"""

from __future__ import annotations

import pytest

from kakeya.runtime.kernels import nvrtc


@pytest.mark.parametrize("source", ["fp8_row.cu", "fp8_block.cu"])
def test_the_header_is_put_in_place_of_its_include(source):
    original = (nvrtc.FOLDER / source).read_text().splitlines()
    header = (nvrtc.FOLDER / "common.cuh").read_text().rstrip().splitlines()
    text = nvrtc.source_text(source).splitlines()
    assert not any(line.startswith("#include") for line in text)
    at = original.index('#include "common.cuh"')
    assert text[:at] == original[:at]
    assert text[at:at + len(header) + 2] == ['#line 1 "common.cuh"', *header, f'#line {at + 2} "{source}"']
    # After the marker, line numbers count from the kernel file's own again.
    assert text[at + len(header) + 2:] == original[at + 1:]
