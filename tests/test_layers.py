"""The architecture as CI enforces it: import-linter's contracts (the layers of shared/DESIGN.md), no module using
another's private names, and Classifier staying a thin facade."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "lint_imports.py"
PACKAGES = {"cellsdk": REPO / "cellsdk", "cellsdk.converters": REPO / "converters",
            "cellsdk.benchmarks": REPO / "benchmarks"}


def _lint(*args: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("importlinter", reason="import-linter is not installed: pip install 'cellsdk[test]'")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_every_import_linter_contract_is_kept():
    result = _lint()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout


def test_the_contracts_catch_a_runtime_module_importing_torch_the_toolchain_or_a_higher_layer(tmp_path):
    assert _lint("--layout-only", str(tmp_path)).returncode == 0
    (tmp_path / "cellsdk" / "serve" / "uploads.py").open("a").write("\nfrom cellsdk.training import train\n")
    (tmp_path / "cellsdk" / "inference.py").open("a").write("\nimport torch\n")
    (tmp_path / "cellsdk" / "guard" / "scores.py").open("a").write("\nfrom cellsdk.classifier import Classifier\n")
    (tmp_path / "cellsdk" / "benchmarks" / "stats.py").open("a").write("\nimport cellsdk.benchmarks.studies.tta\n")
    result = _lint("--tree", str(tmp_path))
    assert result.returncode != 0
    assert "0 kept, 4 broken" in result.stdout, result.stdout[-3000:]
    for chain in ("cellsdk.serve.uploads -> cellsdk.training", "cellsdk.inference -> torch",
                  "cellsdk.guard.scores -> cellsdk.classifier", "cellsdk.benchmarks.stats -> cellsdk.benchmarks.studies"):
        assert chain in result.stdout


def _modules() -> dict[str, ast.Module]:
    out = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = ast.parse(path.read_text(encoding="utf-8"))
    return out


def test_no_module_uses_another_modules_private_names():
    modules = _modules()
    private = {name: {node.name for node in ast.walk(tree)
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and node.name.startswith("_") and not node.name.startswith("__")}
               | {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
                  if isinstance(t, ast.Name) and t.id.startswith("_") and not t.id.startswith("__")}
               for name, tree in modules.items()}
    found = []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cellsdk") and node.module != name:
                found += [f"{name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and node.attr not in private[name] and not (isinstance(node.value, ast.Name)
                                                                and node.value.id in ("self", "cls", "sys", "os")):
                owners = [other for other, names in private.items() if other != name and node.attr in names]
                found += [f"{name}: .{node.attr} (private to {', '.join(owners)})"] if owners else []
    assert found == []


def test_classifier_is_a_thin_facade():
    lines = (REPO / "cellsdk" / "classifier.py").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"cellsdk/classifier.py has {lines} lines: move the new piece into its own module"


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The cellsdk modules ``name`` imports, at its top or inside a function (``TYPE_CHECKING`` blocks aside)."""
    typing_only = {id(sub) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for sub in ast.walk(node)}

    def module_of(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {module_of(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found |= {module_of(f"{node.module}.{alias.name}") for alias in node.names}
    return {m for m in found if m and m != name}


def test_no_import_circles():
    modules = _modules()
    graph = {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}
    circles = []
    for start in graph:  # a path from a module's import back to itself, found by depth-first search
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start and len(path) > 1 and not start.startswith(nxt + "."):
                    circles.append(" -> ".join((*path, start)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, (*path, nxt)))
    assert circles == [], "import circles (move the shared piece into a module both can import):\n" + "\n".join(
        sorted(circles, key=len)[:10])


def test_no_module_over_500_lines():
    over = {str(path.relative_to(REPO)): count for root in PACKAGES.values() for path in root.rglob("*.py")
            if (count := path.read_text(encoding="utf-8").count("\n")) > 500}
    assert over == {}, f"split these where a reader would draw the line: {over}"
