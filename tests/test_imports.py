from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout


def test_import_cellsdk_leaves_torch_unloaded():
    out = _fresh(
        "import sys, cellsdk, cellsdk.cli, cellsdk.datasets, cellsdk.metrics, cellsdk.preprocessing, cellsdk.serve\n"
        "from cellsdk.artefacts.checkpoints import read_checkpoint_metadata\n"
        "cellsdk.load_dataset; cellsdk.preprocess\n"
        "print(sorted(m for m in ('torch', 'timm', 'matplotlib', 'onnx') if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_layer_packages_are_installed_under_cellsdk():
    out = _fresh("import cellsdk.converters, cellsdk.benchmarks; print('ok')")
    assert out.strip() == "ok"


def test_the_service_is_torch_free_and_import_cellsdk_does_not_load_it():
    out = _fresh("import sys, cellsdk, cellsdk.serve; print('fastapi' in sys.modules)\n"
                 "import importlib.util\n"
                 "if importlib.util.find_spec('fastapi'):\n"
                 "    import cellsdk.serve.app, cellsdk.serve.server\n"
                 "print(sorted(m for m in ('torch', 'timm', 'matplotlib', 'onnx') if m in sys.modules))")
    assert out.split() == ["False", "[]"]
