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
