#!/usr/bin/env bash
# Build the documentation site (Material for MkDocs) into site/, strictly: a broken link or a docstring reference
# that does not resolve fails the build. Usage: scripts/docs.sh [serve]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
if [ "${1:-}" = "serve" ]; then
  exec .venv/bin/mkdocs serve
fi
exec .venv/bin/mkdocs build --strict "$@"
