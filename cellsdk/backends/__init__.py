"""Inference backends, one module per runtime, registered by file suffix.

A backend turns a float32 NCHW batch into an ``N x C`` array of model outputs.
Each module registers itself with :func:`register_backend` and imports its
runtime (onnxruntime, openvino, torch, coremltools) only when a model is
loaded, so importing this package stays light.

Examples:
    >>> from cellsdk.backends import backend_for_path, backend_names
    >>> backend_for_path("model.onnx").name
    'onnxruntime'
    >>> backend_names()
    ('onnxruntime', 'openvino', 'torchscript', 'coreml', 'litert', 'executorch')
"""

from __future__ import annotations

from cellsdk.backends.base import (
    MAX_THREADS,
    Backend,
    backend_for_path,
    backend_names,
    get_backend,
    register_backend,
    supported_suffixes,
)

__all__ = [
    "MAX_THREADS",
    "Backend",
    "backend_for_path",
    "backend_names",
    "get_backend",
    "register_backend",
    "supported_suffixes",
]

# Importing a backend module registers it; this order is the preference order when artefacts tie.
from cellsdk.backends import onnxruntime  # noqa: F401, I001
from cellsdk.backends import openvino  # noqa: F401
from cellsdk.backends import torchscript  # noqa: F401
from cellsdk.backends import coreml  # noqa: F401
from cellsdk.backends import litert  # noqa: F401
from cellsdk.backends import executorch  # noqa: F401
