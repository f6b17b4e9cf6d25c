#!/usr/bin/env bash
# Lint and type-check: ruff on everything, mypy and import-linter on the public packages (cellsdk, cellsdk.converters,
# cellsdk.benchmarks) as they are installed. Its own step of .ci/run, after the tests; also on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
given=${PYTHON:-.venv/bin/python}
py="$(cd "$(dirname "$given")" && pwd)/$(basename "$given")"  # absolute, symlinks kept (a venv's python)
"$py" -m ruff check cellsdk converters benchmarks tests examples scripts
# mypy follows the installed layout: converters/ and benchmarks/ are cellsdk.converters and cellsdk.benchmarks
# (setup.cfg's package_dir); a tree of symbolic links shows it that layout without copying anything.
tree=".venv/.mypy-tree"
rm -rf "$tree" && mkdir -p "$tree/cellsdk"
for entry in cellsdk/*; do ln -s "$PWD/$entry" "$tree/cellsdk/"; done
ln -s "$PWD/converters" "$tree/cellsdk/converters"
ln -s "$PWD/benchmarks" "$tree/cellsdk/benchmarks"
cd "$tree" && "$py" -m mypy --config-file "$OLDPWD/pyproject.toml" --cache-dir "$OLDPWD/.venv/.mypy_cache" -p cellsdk
# the layers of shared/DESIGN.md as import-linter contracts (pyproject.toml), on the installed layout too
cd "$OLDPWD" && "$py" scripts/lint_imports.py
