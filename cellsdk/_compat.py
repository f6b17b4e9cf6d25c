"""Old module paths, kept working for one release after the regrouping of cellsdk 0.10 (removed in 0.11).

``import cellsdk.cpu`` (or ``from cellsdk.jobs import run_job``) still works: a finder at the end of
``sys.meta_path`` answers for the old names only where no real module has them, builds a module that re-exports
the public names (``__all__``) of where they moved, and emits one :class:`DeprecationWarning` naming the new path.
Nothing here is imported unless an old path is.

Examples:
    >>> import sys, warnings
    >>> _ = sys.modules.pop("cellsdk.jobs", None)  # as in a fresh process
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     from cellsdk.jobs import run_job
    >>> run_job.__module__, [w.category.__name__ for w in caught]
    ('cellsdk.batch.jobs', ['DeprecationWarning'])
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import types
import warnings
from typing import Any

__all__ = ["MOVED", "REMOVED_IN", "install"]

#: the release that drops these aliases
REMOVED_IN = "0.11"

#: old module path -> the modules its public names live in now
MOVED: dict[str, tuple[str, ...]] = {
    "cellsdk.cpu": ("cellsdk.platform.cpu", "cellsdk.artefacts.cpu_records"),
    "cellsdk.gpu": ("cellsdk.platform.gpu",),
    "cellsdk.nvml": ("cellsdk.platform.nvml",),
    "cellsdk.devices": ("cellsdk.platform.devices",),
    "cellsdk.ood_scores": ("cellsdk.guard.scores", "cellsdk.arrays"),
    "cellsdk.input_checks": ("cellsdk.guard.input_checks",),
    "cellsdk.manifest": ("cellsdk.artefacts.manifest",),
    "cellsdk.resolve": ("cellsdk.artefacts.resolve",),
    "cellsdk.info": ("cellsdk.artefacts.info",),
    "cellsdk.checkpoints": ("cellsdk.artefacts.checkpoints",),
    "cellsdk.verification": ("cellsdk.artefacts.gate_status",),
    "cellsdk.selfcheck": ("cellsdk.artefacts.selfcheck",),
    "cellsdk.verdicts": ("cellsdk.artefacts.verdicts",),
    "cellsdk.engine": ("cellsdk.batch.engine",),
    "cellsdk.jobs": ("cellsdk.batch.jobs",),
    "cellsdk.results": ("cellsdk.batch.results",),
    "cellsdk.distributed": ("cellsdk.batch.distributed",),
    "cellsdk.shifts": ("cellsdk.converters.shifts",),
    "cellsdk.duplicates": ("cellsdk.training.duplicates",),
    "cellsdk.serve.metrics": ("cellsdk.serve.prometheus",),
    "cellsdk.training.explain": ("cellsdk.training.gradcam",),
    "cellsdk.converters.verify": ("cellsdk.converters.gate",),
    "cellsdk.converters.reverify": ("cellsdk.converters.verify_deployed",),
    "cellsdk.benchmarks.explain": ("cellsdk.benchmarks.studies.explanations",),
    # the studies that reproduce a table, apart from the cellsdk-bench harness since 0.10
    "cellsdk.benchmarks.adaptation": ("cellsdk.benchmarks.studies.adaptation",),
    "cellsdk.benchmarks.arch_matrix": ("cellsdk.benchmarks.studies.arch_matrix",),
    "cellsdk.benchmarks.explanations": ("cellsdk.benchmarks.studies.explanations",),
    "cellsdk.benchmarks.hostile_clients": ("cellsdk.benchmarks.studies.hostile_clients",),
    "cellsdk.benchmarks.install_size": ("cellsdk.benchmarks.studies.install_size",),
    "cellsdk.benchmarks.lighter_models": ("cellsdk.benchmarks.studies.lighter_models",),
    "cellsdk.benchmarks.litert_int8_recipes": ("cellsdk.benchmarks.studies.litert_int8_recipes",),
    "cellsdk.benchmarks.tta": ("cellsdk.benchmarks.studies.tta",),
}


class _MovedModules:
    """Finds the old paths of :data:`MOVED` (last on ``sys.meta_path``: a real module of that name always wins).

    A meta-path finder and loader by protocol (``find_spec``, ``create_module``, ``exec_module``): subclassing
    ``importlib.abc``'s classes would import ``importlib.resources`` and cost every ``import cellsdk`` 12 ms.
    """

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)  # type: ignore[arg-type]  # a Loader by protocol

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        targets = MOVED[module.__name__]
        exported: list[str] = []
        for target in targets:
            moved = importlib.import_module(target)
            for name in getattr(moved, "__all__", ()):
                setattr(module, name, getattr(moved, name))
                exported.append(name)
        module.__all__ = exported  # type: ignore[attr-defined]
        new = " and ".join(targets)
        module.__doc__ = f"Deprecated: moved to {new}; this alias goes in cellsdk {REMOVED_IN}."
        _warn(f"{module.__name__} is deprecated: import {new} instead (this alias goes in cellsdk {REMOVED_IN})")


def _machinery(filename: str) -> bool:
    """Whether a frame's file is the import machinery (or this module)."""
    return (filename.startswith("<frozen importlib") or filename == __file__
            or os.path.dirname(filename) == os.path.dirname(importlib.__file__))


def _warn(message: str) -> None:
    """A DeprecationWarning attributed to the line that imported the old path (not to the import machinery)."""
    frame = sys._getframe(1)
    while frame is not None and _machinery(frame.f_code.co_filename):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return
    module = frame.f_globals.get("__name__", "<unknown>")
    registry = frame.f_globals.setdefault("__warningregistry__", {})
    warnings.warn_explicit(message, DeprecationWarning, frame.f_code.co_filename, frame.f_lineno, module, registry)


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once; ``import cellsdk`` does it)."""
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
