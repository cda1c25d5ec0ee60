"""The TypeScript SDK's Node suite (sdk/typescript), run from pytest so the README's test command covers it.

`npm ci` installs the exact versions of package-lock.json when node_modules is missing or older
than the lock file; `npm test` builds the package and runs `node --test`, whose integration tests
start real `kakeya serve` processes with this interpreter. Everything runs in a process group of
its own, killed at the end, so no server outlives the test.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sdk" / "typescript"
INSTALL_TIMEOUT_S = 600
TEST_TIMEOUT_S = 1200


def _run(command: list[str], timeout_s: float) -> tuple[int, str]:
    # The runtime's settings stay out of the Node suite, save the run's converted-model cache.
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("KAKEYA_") or name == "KAKEYA_MODEL_CACHE_DIR"}
    env["KAKEYA_PYTHON"] = sys.executable
    process = subprocess.Popen(command, cwd=PACKAGE, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"`{' '.join(command)}` did not finish within {timeout_s} s:\n{output[-20000:]}")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything it left behind
        except ProcessLookupError:
            pass
    return process.returncode, output


def _dependencies_installed() -> bool:
    marker = PACKAGE / "node_modules" / ".package-lock.json"
    return marker.exists() and marker.stat().st_mtime >= (PACKAGE / "package-lock.json").stat().st_mtime


@pytest.mark.timeout(INSTALL_TIMEOUT_S + TEST_TIMEOUT_S + 60)
def test_typescript_sdk_node_suite():
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip("node and npm are not installed: the TypeScript SDK's suite (sdk/typescript) needs them")
    if not _dependencies_installed():
        code, output = _run([npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"], INSTALL_TIMEOUT_S)
        assert code == 0, f"npm ci failed ({code}):\n{output[-20000:]}"
    code, output = _run([npm, "test"], TEST_TIMEOUT_S)
    print(output[-4000:])
    assert code == 0, f"the Node suite failed ({code}):\n{output[-30000:]}"
    # node's test runner closes with "# pass N" / "# fail N" (TAP) or "ℹ pass N" (spec).
    passed = re.findall(r"^(?:#|ℹ) pass (\d+)\s*$", output, re.M)
    failed = re.findall(r"^(?:#|ℹ) fail (\d+)\s*$", output, re.M)
    assert passed and int(passed[-1]) > 0 and failed == ["0"], output[-4000:]
