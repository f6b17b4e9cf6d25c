"""``cellsdk serve``: a REST service and a web page for any model ``Classifier.load`` reads (extra ``serve``).

Torch-free, like the rest of the runtime. FastAPI and uvicorn are imported only when an app is made, and their
absence is one clear line (``pip install 'cellsdk[serve]'``).

- :class:`ServeConfig` — address, micro-batching, limits, API key, CORS;
- :func:`create_app` — the ASGI app over a loaded :class:`~cellsdk.Classifier`;
- :func:`serve` — run it under uvicorn until SIGTERM / Ctrl-C, draining requests in flight;
- :class:`MicroBatcher` — the batching queue itself (no web framework needed).

Examples:
    >>> from cellsdk import Classifier
    >>> from cellsdk.serve import ServeConfig, serve
    >>> serve(Classifier.load(), ServeConfig(port=8000, max_batch=32, max_wait_ms=5))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from cellsdk.errors import BackendNotInstalledError
from cellsdk.serve.batching import BusyError, MicroBatcher, ShuttingDownError
from cellsdk.serve.config import API_KEY_ENV, ServeConfig, is_loopback

__all__ = ["API_KEY_ENV", "SERVE_INSTALL", "BusyError", "MicroBatcher", "ServeConfig", "ShuttingDownError",
           "create_app", "is_loopback", "require_serve_packages", "serve"]

SERVE_INSTALL = "pip install 'cellsdk[serve]'"


def require_serve_packages() -> None:
    """Raise one clear line when FastAPI, uvicorn, httptools or python-multipart is missing (httptools: the
    connection layer's limits are built on its parser, :mod:`cellsdk.serve.protocol`).

    Raises:
        BackendNotInstalledError: naming the missing package and the install command.

    Examples:
        >>> require_serve_packages() is None  # FastAPI, uvicorn, httptools and python-multipart are installed here
        True
    """
    import importlib.util

    for module, package in (("fastapi", "FastAPI"), ("uvicorn", "uvicorn"), ("httptools", "httptools"),
                            ("multipart", "python-multipart")):
        if importlib.util.find_spec(module) is None:
            raise BackendNotInstalledError(f"the service needs {package}, which is not installed: {SERVE_INSTALL}")


def create_app(*args: Any, **kwargs: Any) -> Any:
    """The FastAPI app over a loaded classifier (see :func:`cellsdk.serve.app.create_app`).

    Examples:
        >>> from cellsdk import Classifier
        >>> create_app(Classifier.load()).title
        'cellsdk'
    """
    require_serve_packages()
    from cellsdk.serve.app import create_app as make

    return make(*args, **kwargs)


def serve(*args: Any, **kwargs: Any) -> None:
    """Run the service under uvicorn (see :func:`cellsdk.serve.server.serve`).

    Examples:
        >>> from cellsdk import Classifier
        >>> serve(Classifier.load(), ServeConfig(port=8080))  # doctest: +SKIP
    """
    require_serve_packages()
    from cellsdk.serve.server import serve as run

    run(*args, **kwargs)
