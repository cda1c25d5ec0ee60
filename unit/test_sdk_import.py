"""Importing the SDK needs only grpcio, protobuf and the standard library."""

from __future__ import annotations

import subprocess
import sys

import kakeya


def test_import_pulls_in_neither_torch_nor_transformers():
    check = "import kakeya, sys; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", check], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_exported_name_exists():
    assert all(hasattr(kakeya, name) for name in kakeya.__all__)
