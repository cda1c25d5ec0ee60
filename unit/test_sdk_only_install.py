"""`kakeya serve` where only the SDK is installed (`pip install kakeya`): one line that names the
extra to install, never a ModuleNotFoundError traceback.

The environment is real, not simulated: `python -S` starts without site-packages, and PYTHONPATH
holds exactly what `pip install kakeya` puts there, the kakeya package (laid out as its package-dir
mapping installs it) and the distributions its base requirements pull in, found from kakeya's own
installed metadata. Links to this venv's files make it in milliseconds, where a fresh venv would
need an index; any runtime extra (structlog, torch...) fails to import in it exactly as it does
after an SDK-only install.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys

import pytest

from kakeya.runtime.server import cli

tomllib = pytest.importorskip("tomllib")

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 120


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def _base_distributions() -> set[str]:
    """kakeya's requirements without an extra, and theirs, transitively."""
    found: set[str] = set()
    todo = [r for r in importlib.metadata.requires("kakeya") or () if "extra ==" not in r]
    while todo:
        name = _name(todo.pop())
        if name not in found:
            found.add(name)
            todo += [r for r in importlib.metadata.requires(name) or () if "extra ==" not in r]
    return found


def _lay_out_sdk_install(site: pathlib.Path) -> None:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    (site / "kakeya").mkdir()
    for entry in (ROOT / mapping["kakeya"]).iterdir():
        (site / "kakeya" / entry.name).symlink_to(entry)
    for package, folder in mapping.items():
        target = site.joinpath(*package.split("."))
        if not target.exists():  # kakeya.proto.v1 comes inside kakeya.proto's folder
            target.symlink_to(ROOT / folder)
    for name in _base_distributions():
        dist = importlib.metadata.distribution(name)
        for top in {pathlib.PurePath(file).parts[0] for file in dist.files or ()} - {"..", "__pycache__"}:
            if not (site / top).exists():
                (site / top).symlink_to(pathlib.Path(dist.locate_file(top)))


def _run(site: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "KAKEYA_"))}
    return subprocess.run([sys.executable, "-S", *args], env=dict(env, PYTHONPATH=str(site)), cwd=site,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def test_serve_with_only_the_sdk_installed_names_the_runtime_extra(tmp_path):
    _lay_out_sdk_install(tmp_path)
    # The environment holds the SDK and lacks the runtime, as `pip install kakeya` leaves it.
    probe = _run(tmp_path, "-c", "import kakeya, kakeya.runtime.server.cli\n"
                                 "for name in ('structlog', 'torch', 'prometheus_client'):\n"
                                 "    try:\n        __import__(name)\n    except ModuleNotFoundError:\n"
                                 "        continue\n    raise SystemExit(name + ' is importable')")
    assert probe.returncode == 0, probe.stderr
    result = _run(tmp_path, "-m", "kakeya.runtime.server.cli", "serve", "--port", "0")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "kakeya serve: the server needs the runtime extra (structlog is not installed): "
        "pip install 'kakeya[runtime]'"]


def test_the_extras_modules_cover_every_runtime_requirement():
    """A package added to the [runtime] extra must be named in cli.RUNTIME_EXTRA_MODULES, or its
    missing import would be taken for a broken install and raised."""
    extra = {_name(r) for r in importlib.metadata.requires("kakeya") or () if 'extra == "runtime"' in r}
    providers: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            providers.setdefault(_name(dist), set()).add(module)
    uncovered = {dist for dist in extra if dist in providers and not providers[dist] & cli.RUNTIME_EXTRA_MODULES}
    assert not uncovered
