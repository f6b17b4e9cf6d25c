"""What each runtime costs to install: the installed size of its Python distribution and everything it pulls in.

``python -m cellsdk.benchmarks.studies.install_size [--out DIR]``

Sizes are the files each installed distribution's ``RECORD`` lists, on this machine (its platform's wheels),
followed through the distributions' declared requirements (extras left out). A runtime whose Python bindings
import a package they do not declare (ExecuTorch's need torch) counts it as :data:`RUNTIMES` says. ``numpy`` is
counted (cellsdk needs it anyway; it is listed so the figures can be compared without it).

Examples:
    >>> closure("numpy")
    ['numpy']
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RUNTIMES", "closure", "distribution_bytes", "format_sizes", "measure"]

#: what each cellsdk runtime (or converter toolchain) needs: its distributions, and a note
RUNTIMES: dict[str, tuple[tuple[str, ...], str]] = {
    "onnxruntime (run .onnx)": (("onnxruntime",), "torch-free"),
    "openvino (run .xml)": (("openvino",), "torch-free"),
    "ai-edge-litert (run .tflite)": (("ai-edge-litert",), "torch-free"),
    "executorch (run .pte)": (("executorch", "torch"), "its Python bindings import torch (undeclared)"),
    "torch (run .torchscript)": (("torch",), "the PyPI wheel bundles CUDA libraries"),
    "litert-torch + ai-edge-quantizer (convert to .tflite)": (("litert-torch", "litert-converter", "ai-edge-quantizer"),
                                                              "needs torch and JAX"),
    "executorch (convert to .pte)": (("executorch", "torch"), "needs torch"),
}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution_bytes(name: str) -> int:
    """The bytes of the files an installed distribution's RECORD lists (0 when it is not installed).

    Examples:
        >>> distribution_bytes("numpy") > 1_000_000, distribution_bytes("no-such-distribution")
        (True, 0)
    """
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return 0
    total = 0
    for entry in dist.files or []:
        try:
            total += os.path.getsize(str(dist.locate_file(entry)))
        except OSError:
            pass
    return total


def closure(name: str, seen: set[str] | None = None) -> list[str]:
    """The installed distributions ``name`` pulls in (itself included), sorted, through declared requirements.

    Examples:
        >>> "numpy" in closure("onnxruntime") and "torch" not in closure("onnxruntime")
        True
    """
    seen = set() if seen is None else seen
    key = _key(name)
    if key in seen:
        return sorted(seen)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return sorted(seen)
    seen.add(key)
    for requirement in dist.requires or []:
        if "extra ==" in requirement:
            continue
        closure(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0], seen)
    return sorted(seen)


def measure(only: Sequence[str] | None = None) -> dict[str, Any]:
    """The installed size of every runtime of :data:`RUNTIMES` (or those named in ``only``) on this machine.

    Examples:
        >>> rows = {row["runtime"]: row for row in measure(["onnxruntime (run .onnx)"])["rows"]}
        >>> rows["onnxruntime (run .onnx)"]["total_mb"] > rows["onnxruntime (run .onnx)"]["own_mb"]
        True
    """
    import platform

    rows = []
    for label, (roots, note) in RUNTIMES.items():
        if only is not None and label not in only:
            continue
        if not all(distribution_bytes(root) for root in roots):
            rows.append({"runtime": label, "installed": False, "note": note})
            continue
        names: set[str] = set()
        for root in roots:
            names.update(closure(root))
        sizes = {name: distribution_bytes(name) for name in sorted(names)}
        versions = {root: md.version(root) for root in roots}
        rows.append({"runtime": label, "installed": True, "versions": versions, "note": note,
                     "own_mb": round(sum(distribution_bytes(r) for r in roots) / 1e6, 1),
                     "total_mb": round(sum(sizes.values()) / 1e6, 1), "distributions": len(sizes),
                     "largest": [{"name": n, "mb": round(b / 1e6, 1)}
                                 for n, b in sorted(sizes.items(), key=lambda item: -item[1])[:5]]})
    return {"machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}", "rows": rows}


def format_sizes(report: dict[str, Any]) -> str:
    """The report as a Markdown table.

    Examples:
        >>> print(format_sizes({"machine": "Linux x86_64", "rows": [{"runtime": "x", "installed": False,
        ...                                                          "note": "torch-free"}]}).splitlines()[-1])
        | x | not installed | - | - | - | - | torch-free |
    """
    lines = [f"Installed sizes on {report['machine']} (the files each distribution's RECORD lists, through its "
             "declared requirements)", "", "| runtime | versions | own MB | with what it pulls in, MB | "
             "distributions | largest | note |", "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        if not row["installed"]:
            lines.append(f"| {row['runtime']} | not installed | - | - | - | - | {row['note']} |")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in row["versions"].items())
        largest = ", ".join(f"{d['name']} {d['mb']:.0f}" for d in row["largest"][:3])
        lines.append(f"| {row['runtime']} | {versions} | {row['own_mb']:.0f} | {row['total_mb']:.0f} | "
                     f"{row['distributions']} | {largest} | {row['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m cellsdk.benchmarks.studies.install_size``: print the table (and write it with ``--out``).

    Examples:
        >>> main([])  # doctest: +SKIP
    """
    from cellsdk._io import write_json, write_text

    parser = argparse.ArgumentParser(prog="python -m cellsdk.benchmarks.studies.install_size",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = measure()
    print(format_sizes(report))
    if args.out:
        write_json(args.out / "install_size.json", report)
        write_text(args.out / "install_size.md", format_sizes(report) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="install_size")
