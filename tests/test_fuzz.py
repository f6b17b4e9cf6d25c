"""The fuzz targets: the committed corpus and the regressions replayed on every run, then a short
coverage-guided atheris run of each target (CELLSDK_FUZZ_SECONDS, default 10 s each; 0 skips it)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # coverage-guided fuzzing for seconds per target

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
_spec = importlib.util.spec_from_file_location("cellsdk_fuzz_targets", FUZZ / "targets.py")
assert _spec is not None and _spec.loader is not None
_targets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_targets)
TARGETS = _targets.TARGETS  # the very functions atheris fuzzes
SECONDS = int(os.environ.get("CELLSDK_FUZZ_SECONDS", "10"))


@pytest.mark.parametrize("path", sorted((FUZZ / "corpus" / "image").iterdir()) + sorted((FUZZ / "regressions").iterdir()),
                         ids=lambda p: p.name)
def test_image_corpus_decodes_or_is_refused(path):
    TARGETS["image"](path.read_bytes())


@pytest.mark.parametrize("path", sorted((FUZZ / "corpus" / "metadata").iterdir()), ids=lambda p: p.name)
def test_metadata_corpus_parses_or_is_refused(path):
    TARGETS["metadata"](path.read_bytes())


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed: pip install 'cellsdk[fuzz]' (scripts/setup.sh does)")
@pytest.mark.skipif(SECONDS <= 0, reason="CELLSDK_FUZZ_SECONDS=0")
@pytest.mark.parametrize("target", ["image", "metadata"])
def test_coverage_guided_fuzzing_finds_nothing(target, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / target, corpus)  # new inputs land in tmp, not in the repository
    result = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_targets.py"), target, str(corpus), f"-max_total_time={SECONDS}",
         "-rss_limit_mb=3072", "-timeout=30", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=SECONDS * 4 + 120)
    output = result.stdout + result.stderr
    runs = [line for line in output.splitlines() if line.startswith("Done ")]
    assert result.returncode == 0, f"fuzzing {target} found a failure:\n{output[-3000:]}"
    assert runs, output[-2000:]  # e.g. "Done 252183 runs in 16 second(s)"
