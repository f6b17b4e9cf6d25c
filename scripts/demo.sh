#!/usr/bin/env bash
# The main job, end to end on a fresh machine: set up, then load the shipped model,
# predict the sample cells (also as a large job and through the REST service), re-convert it
# (fp16, int8) through the gate, benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python examples/quickstart.py "$@"
