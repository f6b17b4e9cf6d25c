"""The HTTP/1.1 connection layer under the app: uvicorn's httptools protocol with deliberate limits.

uvicorn alone buffers a request head of any size, waits forever for the first request line, and, past its
connection limit, answers every newcomer 503 while silent sockets hold the slots. Here each connection has:

- a **head size limit** (:attr:`ServeConfig.max_header_bytes`): a longer request line + headers gets
  ``431`` and the connection closes, after at most one read beyond the limit is buffered;
- a **head timeout** (:attr:`ServeConfig.header_timeout`): the request line and headers must arrive within it,
  counted from the connection's start (or the first byte after a keep-alive pause); a client that sent part of
  a head gets ``408``, a silent one is just closed;
- a **body timeout** (:attr:`ServeConfig.body_timeout`): the longest pause while a body is arriving (``408``);
- a **keep-alive timeout** (:attr:`ServeConfig.keep_alive_timeout`) between requests;
- a **connection limit** (:attr:`ServeConfig.max_connections`) that evicts the connection idle the longest
  (waiting for a request head: silent, slow or kept alive) to admit a new one, so a flood of idle sockets
  never locks out a client that sends a real request; only when every connection is busy with a request does a
  newcomer get ``503`` with ``Retry-After``.

Every answer this layer writes itself (400, 408, 431, 503) is a problem document with the app's security headers,
and every connection it closes is counted in ``cellsdk_connections_closed_total{reason=…}``.

Examples:
    >>> from cellsdk.serve.config import ServeConfig
    >>> protocol = guarded_protocol(ServeConfig(), on_close=lambda reason: None, on_error=lambda kind: None)
    >>> protocol.__name__
    'GuardedHttpToolsProtocol'
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cellsdk.serve.config import ServeConfig
from cellsdk.serve.problems import API_POLICY, PROBLEM_MEDIA_TYPE, SECURITY_HEADERS, ApiError

__all__ = ["CLOSE_REASONS", "LINGER_SECONDS", "guarded_protocol", "problem_bytes"]

#: after answering 400 / 408 / 431, how long a connection still reads (and drops) what its client sends
LINGER_SECONDS = 2.0

#: why this layer closes a connection (the ``reason`` label of ``cellsdk_connections_closed_total``)
CLOSE_REASONS = ("header-timeout", "body-timeout", "keep-alive-timeout", "header-too-large", "evicted", "bad-request")


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a request whose head is over the limit."""


def problem_bytes(err: ApiError, path: str = "") -> bytes:
    """A whole HTTP/1.1 answer carrying ``err`` as a problem document, security headers included, closing.

    Examples:
        >>> problem_bytes(ApiError("request-timeout", "too slow")).split(b"\\r\\n")[0]
        b'HTTP/1.1 408 Request Timeout'
    """
    body = json.dumps(err.document(path or None)).encode()
    headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *SECURITY_HEADERS, (b"content-security-policy", API_POLICY.encode()),
               *((k.lower().encode(), v.encode()) for k, v in err.headers.items())]
    status = f"HTTP/1.1 {err.status} {HTTPStatus(err.status).phrase}\r\n".encode()
    return status + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + body


def guarded_protocol(config: ServeConfig, *, on_close: Callable[[str], None],
                     on_error: Callable[[str], None]) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``config``'s limits; ``on_close(reason)`` is called for each connection
    this layer closes, ``on_error(kind)`` for each error answer it writes (the app's metrics count both).

    Examples:
        >>> guarded_protocol(ServeConfig(), on_close=print, on_error=print).__mro__[1].__name__
        'HttpToolsProtocol'
    """
    max_head = config.max_header_bytes
    head_timeout, body_timeout = config.header_timeout, config.body_timeout
    max_connections = config.max_connections

    async def busy(scope: Any, receive: Any, send: Any) -> None:
        """The answer when every connection is busy with a request: 503, retry in a second."""
        on_error("busy")
        err = ApiError("busy", f"the service has {max_connections} connections busy with requests; retry "
                               "shortly", headers={"Retry-After": "1"})
        body = json.dumps(err.document(scope.get("path"))).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), (b"retry-after", b"1"), *SECURITY_HEADERS,
            (b"content-security-policy", API_POLICY.encode())]})
        await send({"type": "http.response.body", "body": body})

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None  # this class limits connections itself (eviction, then 503)
            self.timeout_keep_alive = config.keep_alive_timeout  # type: ignore[assignment]  # call_later takes floats
            self._reading_head = True
            self._head_bytes = 0
            self._waiting_since = time.monotonic()
            self._deadline: asyncio.TimerHandle | None = None
            self._lingering = False
            self._refused = False
            self._head_size = 0

        # -- timers
        def _arm(self, seconds: float, handler: Callable[[], None]) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, handler)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _close(self, reason: str, answer: bytes | None = None) -> None:
            """Close the connection; with an ``answer``, write it and linger: what the client still sends is
            read and dropped for up to :data:`LINGER_SECONDS`, so a client busy sending can read the answer
            instead of a connection reset."""
            self._disarm()
            if self.transport.is_closing() or self._lingering:
                return
            on_close(reason)
            if answer is None:
                self.transport.close()
                return
            self._lingering = True
            self.transport.write(answer)
            try:
                self.transport.write_eof()
            except (OSError, RuntimeError, NotImplementedError):  # a transport that cannot half-close
                self.transport.close()
                return
            self.flow.resume_reading()
            self._deadline = self.loop.call_later(LINGER_SECONDS, self.transport.close)

        def _head_timed_out(self) -> None:
            self._deadline = None
            if self._head_bytes:
                on_error("request-timeout")
                self._close("header-timeout", problem_bytes(ApiError(
                    "request-timeout", f"the request line and headers took longer than {head_timeout:g} s; send "
                                       "them at once")))
            else:
                self._close("header-timeout")

        def _body_timed_out(self) -> None:
            self._deadline = None
            on_error("request-timeout")
            self._close("body-timeout", problem_bytes(ApiError(
                "request-timeout", f"the request body stalled for {body_timeout:g} s; send it without pausing")))

        # -- eviction
        def _idle(self) -> bool:
            return self._reading_head and (self.cycle is None or self.cycle.response_complete) and \
                not self.transport.is_closing() and not self._lingering

        def _live(self) -> int:
            """Open connections, those being closed left out (a closed one leaves the set a loop turn later)."""
            if len(self.connections) <= max_connections:
                return len(self.connections)
            return sum(1 for c in self.connections
                       if not c.transport.is_closing() and not getattr(c, "_lingering", False))

        def _make_room(self) -> None:
            if self._live() <= max_connections:
                return
            idle = [c for c in self.connections
                    if c is not self and isinstance(c, GuardedHttpToolsProtocol) and c._idle()]
            if idle:
                min(idle, key=lambda c: c._waiting_since)._close("evicted")

        # -- uvicorn's protocol interface
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._waiting_since = time.monotonic()
            self._arm(head_timeout, self._head_timed_out)
            self._make_room()

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                return  # answered and closing: what still arrives is dropped unread
            if self._reading_head:
                if self._deadline is None:  # the first byte after a keep-alive pause starts the head's clock
                    self._arm(head_timeout, self._head_timed_out)
                self._head_bytes += len(data)
            elif self.cycle is not None and self.cycle.more_body:
                self._arm(body_timeout, self._body_timed_out)
            super().data_received(data)
            if self._reading_head and self._head_bytes > max_head and not self.transport.is_closing():
                self._head_too_large()  # still incomplete: never buffer more than one read past the limit

        def _head_too_large(self) -> None:
            on_error("header-too-large")
            self._close("header-too-large", problem_bytes(ApiError(
                "header-too-large", f"the request line and headers exceed {max_head:,} bytes; send a shorter "
                                    "request")))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_size = 0

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._head_size += len(url) + 16  # the method, the version and the line break around it

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self._head_size += len(name) + len(value) + 4

        def on_headers_complete(self) -> None:
            self._reading_head = False
            self._disarm()
            if self._head_size > max_head:  # a whole head in one read: refused before any app sees it
                self._refused = True
                raise _HeadTooLarge  # httptools stops parsing; uvicorn calls send_400_response, which answers 431
            super().on_headers_complete()
            if self.cycle is not None and self.cycle.more_body:
                self._arm(body_timeout, self._body_timed_out)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if self._live() > max_connections:
                app = busy
            super()._start_asgi_task(cycle, app)

        def on_response_complete(self) -> None:
            self._reading_head = True
            self._head_bytes = 0
            self._waiting_since = time.monotonic()
            self._disarm()
            super().on_response_complete()

        def timeout_keep_alive_handler(self) -> None:
            if not self.transport.is_closing():
                on_close("keep-alive-timeout")
            super().timeout_keep_alive_handler()

        def eof_received(self) -> None:
            if self._lingering:
                self.transport.close()
            super().eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            if self._refused:
                self._head_too_large()
                return
            on_error("bad-request")
            self._close("bad-request", problem_bytes(ApiError(
                "bad-request", "not a valid HTTP/1.1 request; check the client (a proxy speaking another "
                               "protocol, or TLS sent to this plain-HTTP port?)")))

    return GuardedHttpToolsProtocol
