"""MkDocs hooks: lay cellsdk out as it installs (so mkdocstrings finds cellsdk.converters and cellsdk.benchmarks,
which live beside cellsdk/ in the repository), and add the repository's MODEL_CARD.md as a page."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TREE = REPO / "build" / "api-tree"  # mkdocs.yml: mkdocstrings' python handler reads its sources here


def _lay_out() -> None:
    spec = importlib.util.spec_from_file_location("lint_imports", REPO / "scripts" / "lint_imports.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shutil.rmtree(TREE, ignore_errors=True)
    module.lay_out(TREE)


_lay_out()  # when MkDocs loads this hook, before mkdocstrings collects anything


def on_files(files: Any, config: Any) -> Any:
    """The model card, its figures' paths made relative to the docs folder."""
    from mkdocs.structure.files import File

    card = (REPO / "MODEL_CARD.md").read_text(encoding="utf-8").replace("](docs/", "](")
    files.append(File.generated(config, "model-card.md", content=card))
    return files
