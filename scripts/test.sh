#!/usr/bin/env bash
# Set up and run the test suite (unit tests, doctests, examples, the docs build, the layer contracts), on every core
# (pytest-xdist, a test file per worker at a time: a file's fixtures are built once).
# Usage: scripts/test.sh [--fast] [PYTEST ARGS]   --fast: the fast lane, without the tests marked slow
#        CELLSDK_TEST_WORKERS=1 scripts/test.sh   one process, in collection order
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
lane=()
if [ "${1:-}" = "--fast" ]; then
  shift
  lane=(-m "not slow and not gpu")
fi
workers=()
if [ "${CELLSDK_TEST_WORKERS:-auto}" != 1 ] && .venv/bin/python -c "import xdist" 2>/dev/null; then
  workers=(-n "${CELLSDK_TEST_WORKERS:-auto}" --dist loadfile)
fi
# a virtual X display for the napari plugin's viewer tests (they skip without a display)
display=()
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
  display=(xvfb-run -a -s "-screen 0 1600x1000x24")
fi
exec "${display[@]}" .venv/bin/python -m pytest "${lane[@]}" "${workers[@]}" "$@"
