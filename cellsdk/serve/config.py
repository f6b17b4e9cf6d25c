"""``ServeConfig``: how ``cellsdk serve`` listens, batches, limits and authenticates (framework-free).

Examples:
    >>> ServeConfig().host, ServeConfig().max_batch, ServeConfig.unbatched().max_batch
    ('127.0.0.1', 32, 1)
    >>> ServeConfig(host="0.0.0.0").check()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cellsdk.errors.ConfigError: binding 0.0.0.0 opens the service to the network: set an API key ...
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Any

from cellsdk._validate import require_float, require_int
from cellsdk.errors import ConfigError
from cellsdk.preprocessing import MAX_IMAGE_PIXELS

__all__ = ["API_KEY_ENV", "MIN_API_KEY_LENGTH", "ServeConfig", "is_loopback"]

#: The environment variable ``cellsdk serve`` reads the API key from (safer than ``--api-key``, which ``ps`` shows).
API_KEY_ENV = "CELLSDK_API_KEY"
#: Shorter keys are refused: a key is a password that anyone on the network may guess at.
MIN_API_KEY_LENGTH = 16


def is_loopback(host: str) -> bool:
    """True when ``host`` is only reachable from this machine (``127.0.0.0/8``, ``::1``, ``localhost``).

    Examples:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0"), is_loopback("::")
        (True, True, False, False)
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


@dataclass(frozen=True)
class ServeConfig:
    """Options of the REST service. Frozen; use :func:`dataclasses.replace` or a preset to vary one.

    Attributes:
        host: the address to bind (loopback by default; any other needs ``api_key``).
        port: the TCP port (0: any free one, printed at start).
        max_batch: images per runtime call across concurrent requests (1: no micro-batching).
        max_wait_ms: at most how long queued images wait for admitted ones still being decoded to join their
            batch (a lone request never waits; see :mod:`cellsdk.serve.batching`).
        max_queue: images admitted at once (decoding, queued or running); a request beyond it gets 503 with
            ``Retry-After``, so the backlog never grows without bound.
        max_images: images in one request.
        max_upload_bytes: bytes in one request body (413 above it, checked before the body is read when the
            client sends ``Content-Length``).
        max_pixels: pixels in one image (the decompression-bomb guard; at most the SDK's own limit).
        top_k: classes listed per image unless the request says ``top_k``.
        api_key: the key every ``/v1`` and ``/metrics`` request must carry (``X-API-Key`` or
            ``Authorization: Bearer``); required when ``host`` is not loopback.
        cors_origins: origins allowed to call the API from a browser (empty: CORS off).
        decode_workers: threads decoding and preprocessing uploads (overlapped with inference).
        drain_seconds: on SIGTERM, how long in-flight requests may take to finish.
        max_connections: open connections at once. A new connection beyond it evicts the one idle the longest
            (waiting for a request head: silent, slow, or kept alive between requests), so idle sockets never
            lock out a real request; only when all are busy with requests does the newcomer get 503.
        max_header_bytes: the request line and headers together (431 above it; uvicorn alone has no limit).
        header_timeout: seconds for a request line and headers to arrive, from the connection's start or the
            first byte after a keep-alive pause (408 when part arrived, else the connection just closes): a
            slowloris client or a silent socket holds a connection at most this long.
        body_timeout: the longest pause, in seconds, while a request body arrives (408).
        keep_alive_timeout: seconds an idle connection stays open between two requests.
        collect_dir: with it, the review page (``/review``) saves each confirmed or corrected image to
            ``collect_dir/<label>/`` (see :mod:`cellsdk.serve.collect`); needs ``api_key``.
        keep_asked: with ``collect_dir``, also keep every image ``/v1/predict`` was asked about in
            ``collect_dir/unlabelled/`` (:mod:`cellsdk.pool`): the lab's unlabelled pool for ``cellsdk adapt
            --unlabelled``, and the review page's queue (cells whose labels would help most first). Opt-in.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_images: int = 64
    max_upload_bytes: int = 32 * 1024 * 1024
    max_pixels: int = MAX_IMAGE_PIXELS
    top_k: int = 3
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    decode_workers: int = 1
    drain_seconds: float = 30.0
    max_connections: int = 512
    max_header_bytes: int = 32 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    collect_dir: str | None = None
    keep_asked: bool = False

    @classmethod
    def unbatched(cls, **changes: Any) -> ServeConfig:
        """A preset without micro-batching: every image runs alone, in arrival order (the load test's baseline).

        Examples:
            >>> ServeConfig.unbatched().max_batch
            1
        """
        return cls(**{"max_batch": 1, "max_wait_ms": 0.0, **changes})

    def replace(self, **changes: Any) -> ServeConfig:
        """A copy with ``changes``.

        Examples:
            >>> ServeConfig().replace(port=0).port
            0
        """
        return dataclasses.replace(self, **changes)

    def check(self) -> ServeConfig:
        """``self`` if every option is usable; otherwise one :class:`ConfigError` line naming the fix.

        Examples:
            >>> ServeConfig(host="0.0.0.0").check()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            cellsdk.errors.ConfigError: ...
        """
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host must be an address such as 127.0.0.1, got {self.host!r}")
        require_int("port", self.port, minimum=0, maximum=65535)
        require_int("max_batch", self.max_batch, minimum=1, maximum=4096)
        require_float("max_wait_ms", self.max_wait_ms, minimum=0, maximum=10_000)
        require_int("max_images", self.max_images, minimum=1, maximum=10_000)
        require_int("max_queue", self.max_queue, minimum=1)
        if self.max_queue < self.max_images:
            raise ConfigError(f"max_queue ({self.max_queue}) must be at least max_images ({self.max_images}), or a "
                              "request of max_images images could never be admitted")
        require_int("max_upload_bytes", self.max_upload_bytes, minimum=1024)
        require_int("max_pixels", self.max_pixels, minimum=1, maximum=MAX_IMAGE_PIXELS)
        require_int("top_k", self.top_k, minimum=1)
        require_int("decode_workers", self.decode_workers, minimum=1, maximum=256)
        require_float("drain_seconds", self.drain_seconds, minimum=0)
        require_int("max_connections", self.max_connections, minimum=1)
        require_int("max_header_bytes", self.max_header_bytes, minimum=1024, maximum=1024 * 1024)
        require_float("header_timeout", self.header_timeout, minimum=0.1, maximum=3600)
        require_float("body_timeout", self.body_timeout, minimum=0.1, maximum=3600)
        require_float("keep_alive_timeout", self.keep_alive_timeout, minimum=0.1, maximum=3600)
        if self.api_key is not None and (len(self.api_key) < MIN_API_KEY_LENGTH or not self.api_key.isprintable()
                                         or self.api_key != self.api_key.strip()):
            raise ConfigError(f"the API key must be at least {MIN_API_KEY_LENGTH} printable characters without "
                              "surrounding spaces (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
        if self.collect_dir is not None and not self.api_key:
            raise ConfigError("--collect saves images as training data: set an API key too (--api-key or "
                              "CELLSDK_API_KEY), so only the lab's own staff can add to it")
        if self.keep_asked and self.collect_dir is None:
            raise ConfigError("--keep-asked keeps the cells in the --collect folder: add --collect DIR")
        if not is_loopback(self.host) and not self.api_key:
            raise ConfigError(f"binding {self.host} opens the service to the network: set an API key (--api-key or "
                              f"the {API_KEY_ENV} environment variable), or bind 127.0.0.1")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"CORS origin {origin!r}: give a scheme and host, e.g. https://lab.example.org")
        return self
