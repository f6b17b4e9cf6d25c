"""Every public function has a docstring example: each function exported in a module's ``__all__``, and each
documented public method of an exported class, shows its use with ``>>>`` (run as a doctest where it can run
here; a ``+SKIP`` marks one that needs data, a model or a device the suite does not have)."""

from __future__ import annotations

import ast

from tests.conftest import REPO

ROOTS = (REPO / "cellsdk", REPO / "converters", REPO / "benchmarks")


def _is_property(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """``@property`` getters and ``@x.setter`` setters are attributes, documented as such."""
    return any((isinstance(d, ast.Name) and d.id == "property") or (isinstance(d, ast.Attribute) and d.attr == "setter")
               for d in node.decorator_list)


def _public_functions() -> list[tuple[str, ast.AST]]:
    found = []
    for root in ROOTS:
        for path in sorted(root.rglob("*.py")):
            if any(part.startswith("_") and part != "__init__.py" for part in path.relative_to(REPO).parts):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            exported: set[str] = set()
            for node in tree.body:
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                        for t in node.targets):
                    exported = {element.value for element in node.value.elts}  # type: ignore[attr-defined]
            where = path.relative_to(REPO)
            for node in tree.body:
                if getattr(node, "name", None) not in exported:
                    continue
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.append((f"{where}:{node.lineno} {node.name}", node))
                elif isinstance(node, ast.ClassDef):
                    found += [(f"{where}:{m.lineno} {node.name}.{m.name}", m) for m in node.body
                              if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and not m.name.startswith("_")
                              and ast.get_docstring(m) and not _is_property(m)]
    return found


def test_every_public_function_has_an_example():
    functions = _public_functions()
    assert len(functions) > 400
    missing = [name for name, node in functions if ">>>" not in (ast.get_docstring(node) or "")]  # type: ignore[arg-type]
    assert missing == []
