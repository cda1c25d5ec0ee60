"""The shape of the code: import layers hold, and no file or function outgrows a screen or two."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Tests, benchmarks and generated stubs are exempt from the function limit; generated stubs and
# tests from the file limit.
SOURCE_DIRS = ("runtime", "actors", "sdk", "proto", "ops")
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60


def _sources() -> list[pathlib.Path]:
    files = [path for folder in SOURCE_DIRS for path in (ROOT / folder).rglob("*.py")]
    return [path for path in files if "v1" not in path.relative_to(ROOT).parts]


def test_import_layers_hold() -> None:
    pytest.importorskip("tomllib")  # the checker reads pyproject.toml with it (Python 3.11+)
    result = subprocess.run([sys.executable, str(ROOT / "ops" / "ci" / "lint_imports.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout


def test_no_source_file_over_the_limit() -> None:
    long = {str(path.relative_to(ROOT)): n for path in _sources()
            if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_over_the_limit() -> None:
    long = {}
    for path in _sources():
        if path.relative_to(ROOT).parts[:2] == ("ops", "bench"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = length
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
