"""Checks the import-linter contracts in pyproject.toml.

The installed package maps top-level folders onto `kakeya.*` (package-dir), which import-linter
cannot follow: it walks one folder per root package. So this lays the folders out as the
installed package sees them, in a temporary directory, and runs lint-imports over that copy.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main() -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir = config["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory(prefix="kakeya-lint-") as tmp:
        # Parents before children, so a child's folder lands inside its copied parent.
        for package, folder in sorted(package_dir.items(), key=lambda item: item[0].count(".")):
            target = pathlib.Path(tmp, *package.split("."))
            shutil.copytree(ROOT / folder, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "examples"))
        env = dict(os.environ, PYTHONPATH=tmp)
        # Through this interpreter rather than the lint-imports script, whose first line names
        # the interpreter it was installed with.
        command = "from importlinter.cli import lint_imports_command; lint_imports_command()"
        return subprocess.run([sys.executable, "-c", command, "--no-cache", str(ROOT / "pyproject.toml")],
                              env=env, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
