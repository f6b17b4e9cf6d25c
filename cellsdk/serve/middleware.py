"""The service's outer layers: every failure as an RFC 9457 problem document (:func:`add_error_handlers`), the
request-body limit (:class:`BodyLimit`) and the request timing and security headers (:class:`Observe`).

Examples:
    >>> from cellsdk.serve.prometheus import Metrics
    >>> app = FastAPI()
    >>> add_error_handlers(app, Metrics())
    >>> app.add_middleware(BodyLimit, max_bytes=1024, metrics=Metrics())
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from cellsdk.serve.batching import BusyError, ShuttingDownError
from cellsdk.serve.problems import API_POLICY, KINDS, PROBLEM_MEDIA_TYPE, SECURITY_HEADERS, ApiError
from cellsdk.serve.prometheus import Metrics

__all__ = ["BodyLimit", "Observe", "add_error_handlers", "send_problem"]

log = logging.getLogger("cellsdk.serve")

_STATUS_KINDS = {404: "not-found", 405: "method-not-allowed", 413: "too-large", 415: "unsupported-media-type"}


def _problem(err: ApiError, path: str) -> JSONResponse:
    return JSONResponse(err.document(path), status_code=err.status, headers=err.headers,
                        media_type=PROBLEM_MEDIA_TYPE)



def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Answer every failure as a problem document, counted in ``metrics``: the service's own errors, a full queue,
    a shutdown, invalid parameters, unknown paths and methods, a client that hung up, and anything unexpected (one
    log line, no traceback to the client).

    Examples:
        >>> from cellsdk.serve.prometheus import Metrics
        >>> add_error_handlers(FastAPI(), Metrics())
    """
    def answer(request: Request, err: ApiError) -> JSONResponse:
        metrics.observe_error(err.kind)
        return _problem(err, request.url.path)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return answer(request, err)

    @app.exception_handler(BusyError)
    async def busy(request: Request, err: BusyError) -> JSONResponse:
        return answer(request, ApiError("busy", str(err), headers={"Retry-After": str(err.retry_after)}))

    @app.exception_handler(ShuttingDownError)
    async def shutting_down(request: Request, err: ShuttingDownError) -> JSONResponse:
        return answer(request, ApiError("shutting-down", str(err), headers={"Retry-After": "1"}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}"
                 for e in err.errors()]
        return answer(request, ApiError("bad-request", "; ".join(parts) or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_KINDS.get(err.status_code, "bad-request")
        detail = str(err.detail) if err.status_code != 404 else f"no such path {request.url.path!r}; see /docs"
        error = ApiError(kind, detail, headers=dict(err.headers or {}))
        if err.status_code not in (status for status, _ in KINDS.values()):
            error.status = err.status_code
        return answer(request, error)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, err: ClientDisconnect) -> Response:
        # nobody is left to read an answer: count the outcome and say it in one line, no traceback
        metrics.observe_error("client-disconnected")
        client = request.client
        log.warning("cellsdk serve: %s hung up during %s %s before its request was read; nothing was classified",
                    f"{client.host}:{client.port}" if client else "a client", request.method, request.url.path)
        return Response(status_code=KINDS["client-disconnected"][0])

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        log.error("cellsdk serve: %s %s failed: %s: %s", request.method, request.url.path, type(err).__name__, err,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        response = answer(request, ApiError("internal", f"the service failed to answer ({type(err).__name__}); "
                                                        "the server log has the details"))
        # this answer comes from the outermost middleware, outside Observe: it adds the headers itself
        for name, value in [*SECURITY_HEADERS, (b"content-security-policy", _API_POLICY)]:
            response.headers[name.decode()] = value.decode()
        return response


_API_POLICY = API_POLICY.encode()
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes``: at once when ``Content-Length`` says so, else
    while reading it.

    Examples:
        >>> from cellsdk.serve.prometheus import Metrics
        >>> BodyLimit(FastAPI(), 1024, Metrics()).max_bytes
        1024
    """

    def __init__(self, app: Any, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    def _error(self, size: str) -> ApiError:
        return ApiError("too-large", f"the request body is {size}, more than this service's limit of "
                                     f"{self.max_bytes:,} bytes; send fewer or smaller images")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            self.metrics.observe_error("too-large")
            await send_problem(send, self._error(f"{int(declared):,} bytes"), scope.get("path", ""),
                                close=True)
            return
        received = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error(f"over {self.max_bytes:,} bytes")
            return message

        await self.app(scope, limited, send)


async def send_problem(send: Send, err: ApiError, path: str, *, close: bool = False) -> None:
    """Send ``err`` as a problem document straight from ASGI (before any route ran), optionally closing the
    connection.

    Examples:
        >>> import asyncio
        >>> sent = []
        >>> async def send(message): sent.append(message)
        >>> asyncio.run(send_problem(send, ApiError("too-large", "too big"), "/v1/predict"))
        >>> sent[0]["status"]
        413
    """
    body = json.dumps(err.document(path)).encode()
    headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Observe:
    """ASGI middleware: time every request into the metrics (by route: one of ``routes``, ``/static`` or ``other``)
    and add the security headers to every answer.

    Examples:
        >>> from cellsdk.serve.prometheus import Metrics
        >>> Observe(FastAPI(), Metrics(), ("/",)).routes
        ('/',)
    """

    def __init__(self, app: Any, metrics: Metrics, routes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        route = path if path in self.routes else ("/static" if path.startswith("/static/") else "other")
        status = 500

        async def observed(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or ())
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in [*SECURITY_HEADERS,
                                                              (b"content-security-policy", _API_POLICY)]
                            if name not in present]
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self.metrics.observe_request(route, status, time.perf_counter() - started)
