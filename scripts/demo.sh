#!/usr/bin/env bash
# The main job, end to end on a fresh machine: set up, train briefly on the shipped
# sample cells, evaluate on their test split, print the report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python examples/quickstart.py "$@"
