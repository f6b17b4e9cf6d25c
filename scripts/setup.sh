#!/usr/bin/env bash
# Create .venv (if missing) and install cellsdk with the tested pins. Idempotent.
# Usage: scripts/setup.sh [EXTRAS]   (default extras: all,test — every backend, so no test skips for a missing package)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all,test}"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
stamp=".venv/.cellsdk-installed-$(cat constraints.txt setup.cfg | sha256sum | cut -c1-16)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[${extras}]"
  touch "$stamp"
fi
# atheris (coverage-guided fuzzing in the test suite) ships wheels for common platforms only; without it the
# fuzz test skips with the reason, so a failed install does not stop the setup.
if [[ ",$extras," == *",test,"* ]] && ! .venv/bin/python -c "import atheris" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet -c constraints.txt atheris \
    || echo "setup: atheris could not be installed; the coverage-guided fuzz test will be skipped" >&2
fi
# QEMU user-mode emulation lets cellsdk-convert verify int8 models on CPU classes this machine is not
# (AVX2 without VNNI, SSE4.2). Best effort: without it those classes are reported "not verified".
if ! command -v qemu-x86_64 >/dev/null 2>&1 && [ "$(uname -m)" = x86_64 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user; } >/dev/null 2>&1 \
      || echo "setup: could not install qemu-user; CPU classes other than this machine's will not be verified" >&2
  else
    echo "setup: qemu-x86_64 not found (apt-get install qemu-user): other CPU classes will not be verified" >&2
  fi
fi
