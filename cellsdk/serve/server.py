"""Run the service under uvicorn: bind (loopback by default), announce the address, drain on SIGTERM / Ctrl-C.

On SIGTERM or SIGINT the listening socket closes at once (new connections are refused), idle keep-alive
connections are closed and busy ones close after their answer (no new request is read), ``/readyz`` turns 503,
and every request already received is answered (for up to ``drain_seconds``) before the process exits with
status 0.
"""

from __future__ import annotations

import contextlib
import errno
import math
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from cellsdk.classifier import Classifier
from cellsdk.errors import ConfigError
from cellsdk.serve.config import ServeConfig

__all__ = ["bind", "serve"]


@contextlib.contextmanager
def _signals_end_the_service() -> Iterator[None]:
    """While uvicorn serves, SIGTERM / SIGINT are its (drain, then stop); it re-raises them to the handlers it
    found once it has stopped, and those must not turn a clean, drained stop into an error exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: any free port).

    Raises:
        ConfigError: the address is in use, not allowed, or not an address of this machine.

    Examples:
        >>> sock = bind("127.0.0.1", 0)
        >>> sock.getsockname()[1] > 0
        True
        >>> sock.close()
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(f"{host}:{port} is already in use: stop the other service or pick another --port") \
                from None
        if err.errno == errno.EACCES:
            raise ConfigError(f"{host}:{port}: permission denied (ports below 1024 need privileges); pick a port "
                              "such as 8000") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def serve(classifier: Classifier, config: ServeConfig | None = None, *, log_level: str = "warning",
          announce: Callable[[str], Any] = print) -> None:
    """Serve ``classifier`` until SIGTERM / SIGINT, then drain and return.

    Args:
        classifier: the loaded model (one instance shared by every request).
        config: listening address, batching, limits, key (default :class:`ServeConfig`).
        log_level: uvicorn's log level (``warning`` keeps the console quiet; ``info`` logs each start and stop).
        announce: called once with the address when the service takes requests.

    Raises:
        BackendNotInstalledError: FastAPI / uvicorn are missing. ConfigError: bad options or an unusable address.

    Examples:
        >>> serve(Classifier.load(), ServeConfig(port=8000))  # doctest: +SKIP
        cellsdk serve: http://127.0.0.1:8000/ (blood_int8.onnx, 8 classes); Ctrl-C to stop
    """
    import uvicorn

    from cellsdk.serve.app import create_app
    from cellsdk.serve.protocol import guarded_protocol

    settings = (config or ServeConfig()).check()
    app = create_app(classifier, settings)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    state = app.state.cellsdk

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True  # readiness fails and new requests are refused while in-flight ones finish
            super().handle_exit(sig, frame)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                announce(f"cellsdk serve: http://{shown}:{port}/ ({classifier.path.name}, "
                         f"{len(classifier.labels)} classes, micro-batches of up to {settings.max_batch} within "
                         f"{settings.max_wait_ms:g} ms); Ctrl-C to stop")

    protocol = guarded_protocol(settings, on_close=state.metrics.observe_closed, on_error=state.metrics.observe_error)
    server = Server(uvicorn.Config(app, http=protocol, log_level=log_level, access_log=False, lifespan="on",
                                   server_header=False, proxy_headers=False,
                                   timeout_graceful_shutdown=math.ceil(settings.drain_seconds),
                                   timeout_keep_alive=math.ceil(settings.keep_alive_timeout)))
    try:
        with _signals_end_the_service():
            server.run(sockets=[sock])
    finally:
        sock.close()
    if server.started is False:
        raise ConfigError("the service did not start (see the messages above)")
