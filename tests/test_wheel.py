"""The wheel, as a user installs it: every subpackage and data file is in it, and it runs from a fresh virtual
environment (an editable install hides a package missing from setup.cfg)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import RAW_SAMPLES, REPO

pytestmark = pytest.mark.slow


def _layout() -> dict[str, str]:
    """Repository folder -> where its files land in the wheel: the layout scripts/lint_imports.py lays out."""
    spec = importlib.util.spec_from_file_location("lint_imports", REPO / "scripts" / "lint_imports.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.LAYOUT)


LAYOUT = _layout()
#: the package data setup.cfg declares, as (repository folder, pattern)
DATA = (("cellsdk/data", "*.onnx"), ("cellsdk/data", "README.md"), ("cellsdk/serve/static", "*"),
        ("cellsdk/serve/static/swagger-ui", "*"), ("benchmarks", "*.toml"))


def _expected() -> set[str]:
    names = set()
    for source, target in LAYOUT.items():
        for path in (REPO / source).rglob("*.py"):
            if "__pycache__" not in path.parts and (path.parent / "__init__.py").exists():
                names.add(f"{target}/{path.relative_to(REPO / source).as_posix()}")
    for folder, pattern in DATA:
        source = next(s for s in sorted(LAYOUT, key=len, reverse=True) if folder == s or folder.startswith(s + "/"))
        for path in (REPO / folder).glob(pattern):
            if path.is_file():
                names.add(f"{LAYOUT[source]}/{path.relative_to(REPO / source).as_posix()}")
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    return next(out.glob("cellsdk-*.whl"))


def test_the_wheel_holds_every_subpackage_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _expected()
    assert sorted(expected - names) == []
    packages = sorted({name.rsplit("/", 1)[0] for name in names if name.endswith("/__init__.py")})
    print(f"{wheel.name}: {len(names)} files, {len(packages)} packages: {', '.join(packages)}")
    assert {"cellsdk/cli", "cellsdk/platform", "cellsdk/guard", "cellsdk/artefacts", "cellsdk/batch",
            "cellsdk/converters", "cellsdk/benchmarks"} <= set(packages)


def test_the_installed_wheel_runs_cellsdk_predict_from_a_fresh_virtual_environment(wheel, tmp_path):
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--quiet", str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    # the dependencies (numpy, Pillow, click, onnxruntime) come from this environment, after the fresh one's own
    # site-packages, so cellsdk itself can only be the wheel's
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = subprocess.run([str(python), "-c", "import cellsdk, cellsdk.converters, cellsdk.benchmarks, cellsdk.cli; "
                            "print(cellsdk.__file__)"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.strip().startswith(site)
    image = next((RAW_SAMPLES / "ig").glob("*.jpg"))
    result = subprocess.run([str(venv / "bin" / "cellsdk"), "predict", str(image)], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"{image}\tig ")
    print(result.stdout.strip())
