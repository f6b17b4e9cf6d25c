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


def test_predicting_on_a_cpu_imports_only_what_it_runs():
    """Cold start: `cellsdk predict IMG` on a CPU loads neither the other commands' modules (training, conversion,
    serving, datasets) nor the NVIDIA probe (when ONNX Runtime has no CUDA provider)."""
    out = _fresh(
        "import sys, io, contextlib\n"
        "import onnxruntime\n"
        "from cellsdk.cli import cli\n"
        "sys.argv = ['cellsdk', 'predict', 'samples/pbc_raw/ig/MMY_163947.jpg']\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        cli()\n"
        "    except SystemExit as exit:\n"
        "        assert not exit.code, exit.code\n"
        "cuda = 'CUDAExecutionProvider' in onnxruntime.get_available_providers()\n"
        "unwanted = ['cellsdk.cli.train', 'cellsdk.cli.adapt', 'cellsdk.cli.convert', 'cellsdk.cli.serve',\n"
        "            'cellsdk.cli.bench', 'cellsdk.datasets', 'cellsdk.training', 'cellsdk.converters',\n"
        "            *([] if cuda else ['cellsdk.platform.gpu'])]\n"
        "print(sorted(m for m in unwanted if m in sys.modules))"
    )
    assert out.strip().splitlines()[-1] == "[]"


def test_the_litert_runtime_does_not_pull_torch_in():
    """``pip install 'cellsdk[litert]'`` is torch-free: ai-edge-litert declares nothing that needs torch (the
    backend running with torch blocked is tests/converters/test_litert.py::test_litert_runs_with_torch_blocked)."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("ai-edge-litert is not installed: pip install 'cellsdk[litert]'")
    from cellsdk.benchmarks.studies.install_size import closure

    pulled = closure("ai-edge-litert")
    assert "ai-edge-litert" in pulled and not {"torch", "jax", "jaxlib", "tensorflow"} & set(pulled)
    assert "torch" in closure("torch") and "torch" not in closure("onnxruntime")
