"""The text NVRTC compiles: a kernel's `#include "common.cuh"` line becomes the header's text.

Runs without a GPU: only the source assembly is checked here; the compiled kernels are tested
against the Triton ones on the GPU machine (test_cuda_row_fp8.py, test_cuda_block_fp8.py).
"""

from __future__ import annotations

import re

import pytest

from kakeya.runtime.kernels import nvrtc


@pytest.mark.parametrize("source", ["fp8_row.cu", "fp8_block.cu"])
def test_each_header_is_put_in_place_of_its_include(source):
    original = (nvrtc.FOLDER / source).read_text().splitlines()
    text = nvrtc.source_text(source).splitlines()
    assert not any(line.startswith("#include") for line in text)
    expected = []
    for number, line in enumerate(original, 1):
        included = re.fullmatch(r'#include "(\w+\.cuh)"', line)
        if included is None:
            expected.append(line)
            continue
        header = (nvrtc.FOLDER / included[1]).read_text().rstrip().splitlines()
        # After the header, line numbers count from the kernel file's own again.
        expected += [f'#line 1 "{included[1]}"', *header, f'#line {number + 1} "{source}"']
    assert '#include "common.cuh"' in original
    assert text == expected