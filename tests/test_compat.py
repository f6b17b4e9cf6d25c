"""The module paths before the regrouping still import for one release, each with a DeprecationWarning naming its
new home; no module of cellsdk itself uses them."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import warnings

import pytest

from cellsdk._compat import MOVED
from tests.conftest import REPO


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_imports_with_a_warning_naming_the_new_one(old):
    if old.startswith(("cellsdk.training", "cellsdk.duplicates")) or old == "cellsdk.benchmarks.explain":
        pytest.importorskip("torch", reason="the toolchain needs torch: pip install 'cellsdk[train]'")
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    ours = [w for w in caught if issubclass(w.category, DeprecationWarning) and old in str(w.message)]
    assert ours and all(new in str(ours[0].message) for new in MOVED[old])
    assert ours[0].filename == __file__  # the warning names the importing line, not the import machinery
    for new in MOVED[old]:
        moved = importlib.import_module(new)
        for name in moved.__all__:
            assert getattr(module, name) is getattr(moved, name)


def test_a_documented_old_path_still_works():
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    from cellsdk.jobs import run_job\nexcept DeprecationWarning as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "cellsdk.jobs is deprecated: import cellsdk.batch.jobs instead" in out


def test_nothing_in_cellsdk_imports_an_old_path():
    pattern = re.compile(r"^\s*(?:from|import)\s+(" + "|".join(re.escape(old) for old in MOVED) + r")\b", re.M)
    offenders = [f"{path.relative_to(REPO)}: {match.group(1)}"
                 for root in ("cellsdk", "converters", "benchmarks", "scripts", "examples", "tests")
                 for path in (REPO / root).rglob("*.py") if path.name != "test_compat.py"
                 for match in pattern.finditer(path.read_text(encoding="utf-8"))]
    assert offenders == []
