#!/usr/bin/env bash
# Set up and run the test suite (unit tests, doctests, examples, the docs build, the layer contracts).
# Usage: scripts/test.sh [--fast] [PYTEST ARGS]   --fast: the fast lane, without the tests marked slow
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${1:-}" = "--fast" ]; then
  shift
  exec .venv/bin/python -m pytest -m "not slow and not gpu" "$@"
fi
exec .venv/bin/python -m pytest "$@"
