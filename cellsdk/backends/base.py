"""The backend contract (:class:`Backend`) and the registry every runtime module registers itself in.

Examples:
    >>> from cellsdk.backends.base import Backend, get_backend
    >>> issubclass(get_backend("onnxruntime"), Backend)
    True
"""

from __future__ import annotations

import abc
import importlib.util
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cellsdk.errors import BackendNotInstalledError, ConfigError, UnsupportedFormatError

__all__ = [
    "MAX_THREADS",
    "Backend",
    "backend_for_path",
    "backend_names",
    "get_backend",
    "register_backend",
    "supported_suffixes",
]

_BACKENDS: dict[str, type[Backend]] = {}
#: the most inference threads an option may ask for (runtimes take a C int; beyond this nothing gets faster)
MAX_THREADS = 256


class Backend(abc.ABC):
    """One loaded model in one runtime.

    Subclasses set the class attributes and implement :meth:`run_all`; ``__init__``
    loads the model and fills ``metadata_json``, ``input_shape``,
    ``num_outputs``, ``output_count`` and ``device``.

    Attributes:
        name: the backend's registry name.
        suffixes: file suffixes it loads.
        devices: the device kinds it runs on (``cpu``, ``cuda``, ``mps``, ``coreml``).
        package: the import name of its runtime.
        install: the pip command that installs that runtime.
        metadata_json: the cellsdk JSON document stored in the model, or None.
        input_shape: ``(N, C, H, W)``; None for a dynamic dimension.
        num_outputs: classes the model outputs (its first output), or None when unknown until run.
        output_count: how many outputs the model has (logits first; e.g. ``features`` second), or None
            when unknown until run.
        device: the device the model runs on, as the runtime names it.
    """

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    package: ClassVar[str]
    install: ClassVar[str]

    #: the device kinds this backend can run on, as cellsdk-bench names them
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    metadata_json: str | None = None
    input_shape: tuple[int | None, ...] = (None, 3, None, None)
    num_outputs: int | None = None
    output_count: int | None = 1
    device: str = "cpu"

    @abc.abstractmethod
    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None, **options: Any) -> None:
        """Load the model at ``path`` on ``device``."""

    @abc.abstractmethod
    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run a float32 NCHW batch; return every output in the model's order (``N x C`` logits first).

        Must be safe to call from several threads.

        Examples:
            >>> import numpy as np
            >>> from cellsdk.artefacts.resolve import open_artefact
            >>> [output.shape for output in open_artefact().backend.run_all(np.zeros((1, 3, 128, 128), np.float32))]
            [(1, 8), (1, 1280), (1, 8, 4, 4)]
        """

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run a float32 NCHW batch; return the ``N x C`` first output (the logits).

        Examples:
            >>> import numpy as np
            >>> from cellsdk.artefacts.resolve import open_artefact
            >>> open_artefact().backend.run(np.zeros((2, 3, 128, 128), np.float32)).shape
            (2, 8)
        """
        return self.run_all(batch)[0]

    @property
    def max_batch(self) -> int | None:
        """The largest batch one call takes (a static batch dimension), or None for any."""
        return self.input_shape[0]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here (package missing, wrong platform), or None if it can.

        Examples:
            >>> get_backend("onnxruntime").unavailable_reason() is None
            True
        """
        if importlib.util.find_spec(cls.package) is None:
            return f"{cls.package} is not installed: {cls.install}"
        return None

    @classmethod
    def device_unavailable_reason(cls, device: str) -> str | None:
        """Why this backend cannot use ``device`` even where the machine has it (e.g. a CPU-only build), or None.

        Examples:
            >>> get_backend("onnxruntime").device_unavailable_reason("cpu") is None
            True
        """
        return None if device in cls.devices else f"{cls.name} does not run on {device}"

    @classmethod
    def require(cls) -> Any:
        """Import and return the runtime package, or raise BackendNotInstalledError naming the extra.

        Examples:
            >>> get_backend("onnxruntime").require().__name__
            'onnxruntime'
        """
        if importlib.util.find_spec(cls.package) is None:
            raise BackendNotInstalledError(f"the {cls.name} backend needs {cls.package}, which is not installed: {cls.install}")
        try:
            return importlib.import_module(cls.package)
        except ImportError as err:
            raise BackendNotInstalledError(f"{cls.package} failed to import ({err}): reinstall it with {cls.install}") from None

    @classmethod
    def option_types(cls) -> dict[str, Any]:
        """The options this backend's ``__init__`` takes (beyond ``device``), with their types.

        Examples:
            >>> sorted(get_backend("onnxruntime").option_types())
            ['graph_optimization', 'providers', 'spinning', 'tensorrt_cache', 'tensorrt_fp16', 'tf32', 'threads']
        """
        hints = typing.get_type_hints(cls.__init__)
        return {name: hints.get(name, Any) for name, parameter in inspect.signature(cls.__init__).parameters.items()
                if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name != "device"}

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` if every key is one of this backend's options with a value of its type.

        Raises:
            ConfigError: an unknown option, a value of the wrong type, or ``threads`` below 1.

        Examples:
            >>> get_backend("onnxruntime").check_options({"threads": "abc"})
            Traceback (most recent call last):
            ...
            cellsdk.errors.ConfigError: onnxruntime option threads='abc': expected a whole number
        """
        known = cls.option_types()
        for key, value in options.items():
            if key not in known:
                raise ConfigError(f"unknown {cls.name} option {key!r}: the {cls.name} backend takes "
                                  f"{', '.join(sorted(known))}")
            expected = _describe_type(known[key])
            if not _has_type(value, known[key]):
                raise ConfigError(f"{cls.name} option {key}={value!r}: expected {expected}")
        threads = options.get("threads")
        if threads is not None and not 1 <= threads <= MAX_THREADS:
            raise ConfigError(f"{cls.name} option threads={threads!r}: expected a whole number from 1 to {MAX_THREADS}")
        return dict(options)

    @classmethod
    def read_metadata_json(cls, path: Path) -> str | None:
        """The cellsdk JSON document stored in the model at ``path`` (default: load it on the CPU and ask).

        Examples:
            >>> from cellsdk.artefacts.resolve import default_model_path
            >>> get_backend("onnxruntime").read_metadata_json(default_model_path())[:11]
            '{"arch": "t'
        """
        return cls(path, device="cpu").metadata_json

    def describe(self) -> str:
        """A short description, e.g. ``onnxruntime on CPUExecutionProvider``.

        Examples:
            >>> from cellsdk.artefacts.resolve import open_artefact
            >>> open_artefact().backend.describe()
            'onnxruntime on CPUExecutionProvider'
        """
        return f"{self.name} on {self.device}"


def _has_type(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a simple type hint (int, float, str, bool, list[str], unions of them, None)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(_has_type(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe_type(hint: Any) -> str:
    names = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
             type(None): "nothing (null)"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(arg) for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) in (list, tuple):
        return "a list of " + _describe_type((typing.get_args(hint) or (Any,))[0]).removeprefix("a ") + "s"
    return names.get(hint, str(hint))


def register_backend(name: str, *suffixes: str, package: str, install: str) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator registering a backend under ``name`` for ``suffixes``.

    Examples:
        >>> @register_backend("echo", ".echo", package="json", install="pip install json")  # doctest: +SKIP
        ... class EchoBackend(Backend): ...
    """

    def decorate(cls: type[Backend]) -> type[Backend]:
        taken = {s for other in _BACKENDS.values() if other.name != name for s in other.suffixes} & set(suffixes)
        if taken:
            raise ValueError(f"suffixes {sorted(taken)} already belong to another backend")
        cls.name, cls.suffixes, cls.package, cls.install = name, tuple(suffixes), package, install
        _BACKENDS[name] = cls
        return cls

    return decorate


def backend_names() -> tuple[str, ...]:
    """The registered backends, in preference order.

    Examples:
        >>> backend_names()
        ('onnxruntime', 'openvino', 'torchscript', 'coreml', 'litert', 'executorch')
    """
    return tuple(_BACKENDS)


def supported_suffixes() -> tuple[str, ...]:
    """Every suffix some backend loads.

    Examples:
        >>> ".onnx" in supported_suffixes() and ".xml" in supported_suffixes()
        True
    """
    return tuple(s for cls in _BACKENDS.values() for s in cls.suffixes)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``.

    Raises:
        UnsupportedFormatError: no such backend.

    Examples:
        >>> get_backend("onnxruntime").name
        'onnxruntime'
    """
    if not isinstance(name, str) or name not in _BACKENDS:
        raise UnsupportedFormatError(f"unknown backend {name!r}: use one of {', '.join(_BACKENDS)}")
    return _BACKENDS[name]


def backend_for_path(path: str | os.PathLike) -> type[Backend]:
    """The backend that loads ``path``, chosen by its suffix.

    Raises:
        UnsupportedFormatError: no backend knows the suffix.

    Examples:
        >>> backend_for_path("model.int8.onnx").name, backend_for_path("model.fp16.xml").name
        ('onnxruntime', 'openvino')
    """
    suffix = Path(path).suffix.lower()
    for cls in _BACKENDS.values():
        if suffix in cls.suffixes:
            return cls
    raise UnsupportedFormatError(
        f"{path}: unsupported model format {suffix or '(no suffix)'}; cellsdk loads "
        f"{', '.join(supported_suffixes())} files or a conversion folder with manifest.json"
    )


def _is_macos() -> bool:
    return sys.platform == "darwin"
