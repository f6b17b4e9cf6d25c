"""Lint and types are part of the suite: ruff (the rule sets in pyproject.toml) and mypy on the public packages."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None or importlib.util.find_spec("mypy") is None,
                    reason="ruff / mypy are not installed: pip install 'cellsdk[lint]' (scripts/setup.sh does)")
def test_ruff_and_mypy_are_clean():
    result = subprocess.run([str(REPO / "scripts" / "lint.sh")], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "All checks passed!" in result.stdout and "Success: no issues found" in result.stdout
