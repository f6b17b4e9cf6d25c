"""The documentation site builds strictly (a broken link, a missing page or a docstring reference that does not
resolve fails it), the CLI reference comes from the commands, and the README stays a front page."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_mkdocs_builds_the_site_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs packages are not installed: pip install 'cellsdk[docs]'")
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("train", "eval", "calibrate", "convert", "verify", "predict", "bench", "serve", "info", "devices"):
        assert f'id="cellsdk-{command}"' in cli  # every command, generated from click
    assert "--from-list" in cli and "--quantize" in cli
    api = (site / "api" / "facade" / "index.html").read_text(encoding="utf-8")
    assert "cellsdk.classifier.Classifier.load" in api and "cellsdk.inference.Inference.run" in api
    assert (site / "model-card" / "index.html").exists()


def test_the_readme_is_a_front_page_with_the_two_commands_first():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 150
    commands = [line for line in lines[:6] if line.startswith("./scripts/")]
    assert [c.split()[0] for c in commands] == ["./scripts/demo.sh", "./scripts/test.sh"]
