"""Facts about the machine a measurement or verification ran on.

Examples:
    >>> sorted(machine_info())
    ['cores', 'cpu', 'flags', 'os', 'python']
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

__all__ = ["describe_machine", "machine_info", "package_versions"]

_FLAG_PREFIXES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx")


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, the SIMD flags that change int8/bf16 kernels, OS and Python.

    Examples:
        >>> machine_info()["cores"] >= 1
        True
    """
    from cellsdk.platform.cpu import host_cpu

    cpu = host_cpu()
    flags = sorted(f for f in cpu.features if f.startswith(_FLAG_PREFIXES))
    return {"cpu": cpu.model, "cores": os.cpu_count(), "flags": flags, "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def describe_machine() -> str:
    """One line: ``AMD EPYC, 2 logical cores, avx512_vnni avx512_bf16, Linux 6.1``.

    Examples:
        >>> "logical cores" in describe_machine()
        True
    """
    info = machine_info()
    return f"{info['cpu']}, {info['cores']} logical cores, {' '.join(info['flags']) or 'no listed SIMD flags'}, {info['os']}"


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of cellsdk and of those of ``names`` that are installed.

    Examples:
        >>> sorted(package_versions(("numpy", "no-such-package")))
        ['cellsdk', 'numpy']
    """
    from cellsdk._version import __version__

    out = {"cellsdk": __version__}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
