"""Check the import-linter contracts of pyproject.toml (the layers of shared/DESIGN.md) on cellsdk as it installs.

converters/ and benchmarks/ sit beside cellsdk/ in the repository and install as cellsdk.converters and
cellsdk.benchmarks (setup.cfg's package_dir), which import-linter cannot follow in the source tree: the sources
are laid out as installed in a temporary folder first.

Usage:
    python scripts/lint_imports.py                  # lay out, lint, exit with import-linter's status
    python scripts/lint_imports.py --layout-only DIR  # only lay the sources out in DIR
    python scripts/lint_imports.py --tree DIR         # lint a tree laid out before (e.g. one a test changed)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: repository folder -> where it lands in the installed package
LAYOUT = {"cellsdk": "cellsdk", "converters": "cellsdk/converters", "benchmarks": "cellsdk/benchmarks"}


def lay_out(dest: Path) -> Path:
    """Copy the package's Python sources into ``dest`` as they install; returns ``dest``."""
    for source, target in LAYOUT.items():
        shutil.copytree(REPO / source, dest / target, dirs_exist_ok=True,
                        ignore=lambda folder, names: [n for n in names if n == "__pycache__"
                                                      or (Path(folder, n).is_file() and not n.endswith(".py"))])
    return dest


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on ``tree`` with the repository's contracts."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", code, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout-only", type=Path, metavar="DIR")
    parser.add_argument("--tree", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    if args.layout_only:
        lay_out(args.layout_only)
        return 0
    if args.tree:
        result = lint(args.tree)
    else:
        with tempfile.TemporaryDirectory(prefix="cellsdk-layers-") as folder:
            result = lint(lay_out(Path(folder)))
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
