"""The FastAPI application: prediction, model card, health, metrics and the web page over one ``Classifier``.

Routes: ``POST /v1/predict``, ``GET /v1/model``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``, ``GET /``
(the web page; its files under ``/static``), and FastAPI's ``/openapi.json``, ``/docs`` and ``/redoc``.
Every error answer is an RFC 9457 problem document (:mod:`cellsdk.serve.problems`).

Examples:
    >>> from cellsdk import Classifier
    >>> from starlette.testclient import TestClient
    >>> with TestClient(create_app(Classifier.load())) as client:  # doctest: +SKIP
    ...     client.post("/v1/predict", content=open("cell.jpg", "rb").read()).json()["predictions"][0]["label"]
    'neutrophil'
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hmac
import io
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, PlainTextResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from cellsdk._io import sha256_file
from cellsdk._version import __version__
from cellsdk.arrays import without_arrays
from cellsdk.classifier import Classifier
from cellsdk.explain import CAMS_OUTPUT, align_map, cam_grids, heat_layer
from cellsdk.platform.cpu import host_cpu
from cellsdk.preprocessing import crop_box
from cellsdk.serve.batching import MicroBatcher
from cellsdk.serve.config import ServeConfig
from cellsdk.serve.middleware import BodyLimit, Observe, add_error_handlers
from cellsdk.serve.openapi import api_description, correct_document
from cellsdk.serve.problems import ApiError
from cellsdk.serve.prometheus import Metrics
from cellsdk.serve.uploads import ACCEPTED_FORMATS, check_and_decode, display_name
from cellsdk.tta import tta_views

__all__ = ["ServiceState", "create_app"]

log = logging.getLogger("cellsdk.serve")

#: The multipart field(s) that carry images.
IMAGE_FIELDS = ("files", "file")
#: Routes the metrics name as they are; any other path counts as ``other`` (bounded label values).
ROUTES = ("/", "/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc",
          "/review", "/v1/review", "/count", "/v1/count")
#: The web page may load only what the app serves itself (no CDN), and nothing may frame it.
PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
#: the API documentation page (Swagger UI from the package): the same (Swagger UI's icons are data: URLs)
DOCS_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
# module level: FastAPI resolves the dependencies' (string) annotations in this module's namespace
_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the service's API key")
_BEARER = HTTPBearer(auto_error=False, description="the service's API key as a bearer token")
@dataclasses.dataclass
class ServiceState:
    """What the app shares between requests: the model, the batcher, the decoding threads, the metrics."""

    classifier: Classifier
    config: ServeConfig
    metrics: Metrics
    model_info: dict[str, Any]
    batcher: MicroBatcher[Any, Any] | None = None
    pool: ThreadPoolExecutor | None = None
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.batcher is not None and not self.draining

    def prepare(self, data: bytes, index: int, name: str | None) -> tuple[Any, tuple[int, int]]:
        """Decode, check and preprocess one upload (runs on a decoding thread); also its size in pixels.

        Examples:
            >>> from cellsdk import Classifier
            >>> state = ServiceState(Classifier.load(), ServeConfig(), Metrics(), {})
            >>> prepared, size = state.prepare(open("samples/pbc_raw/ig/MMY_163947.jpg", "rb").read(), 0, "cell.jpg")
            >>> prepared.array.shape, size
            ((3, 128, 128), (360, 363))
        """
        image = check_and_decode(data, index=index, name=name, max_pixels=self.config.max_pixels)
        return self.classifier.inference.prepare(image), image.size

    def infer(self, prepared: list[Any]) -> list[tuple[Any, Any]]:
        """One runtime call for prepared images from any number of requests (runs on the batcher's thread):
        each image's prediction (every class; each request trims) and its class activation maps (or None).

        Examples:
            >>> from cellsdk import Classifier
            >>> state = ServiceState(Classifier.load(), ServeConfig(), Metrics(), {})
            >>> prepared, _ = state.prepare(open("samples/pbc_raw/ig/MMY_163947.jpg", "rb").read(), 0, None)
            >>> prediction, grid = state.infer([prepared])[0]
            >>> prediction.label, grid.shape
            ('ig', (8, 4, 4))
        """
        classifier = self.classifier
        views = tta_views(classifier.tta)
        result = classifier.inference.run(prepared, top_k=len(classifier.labels), views=views)
        cams = result.outputs.get(CAMS_OUTPUT)
        if cams is None:
            return [(p, None) for p in result.predictions]
        grids = views.unview(cam_grids(cams, len(classifier.labels)))
        return list(zip(result.predictions, grids, strict=True))

    def heatmap(self, prediction: Any, grid: Any, size: tuple[int, int]) -> dict[str, Any]:
        """The page's heat-map layer for the predicted class (a PNG data URL, at most 256 px) and its summary.

        Examples:
            >>> from cellsdk import Classifier
            >>> state = ServiceState(Classifier.load(), ServeConfig(), Metrics(), {})
            >>> prepared, size = state.prepare(open("samples/pbc_raw/ig/MMY_163947.jpg", "rb").read(), 0, None)
            >>> layer = state.heatmap(*state.infer([prepared])[0], size)
            >>> layer["heatmap"][:22], layer["explanation"]["target"]
            ('data:image/png;base64,', 'ig')
        """
        probabilities = list(prediction.probabilities.values())
        index = max(range(len(probabilities)), key=probabilities.__getitem__)
        box = crop_box(size, self.classifier.metadata.preprocessing)
        heat = align_map(grid[index], size, box)
        buffer = io.BytesIO()
        heat_layer(heat, max_side=256).save(buffer, format="PNG")
        peak = divmod(int(heat.argmax()), size[0]) if heat.size else (0, 0)
        return {"heatmap": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
                "explanation": {"target": self.classifier.labels[index], "method": "cam", "box": list(box),
                                "peak": [peak[1], peak[0]]}}


def _model_info(classifier: Classifier, config: ServeConfig) -> dict[str, Any]:
    meta = classifier.metadata
    check = classifier.cpu_check
    return {
        "name": classifier.path.name,
        "sha256": sha256_file(classifier.path) if classifier.path.is_file() else None,
        "labels": list(classifier.labels),
        "backend": classifier.backend_name,
        "device": classifier.device,
        "metadata": without_arrays(meta.to_dict()),
        "verification": {"status": classifier.verification.status, "source": classifier.verification.source,
                         "reasons": list(classifier.verification.reasons),
                         "summary": classifier.verification.describe()},
        "cpu": {"host": host_cpu().to_dict(), "check": check.status, "cpu_class": check.cpu_class,
                "message": check.message},
        "self_check": {**classifier.self_check.to_dict(), "summary": classifier.self_check.describe()},
        "capabilities": {"ood_guard": classifier.guard is not None, "ood_mode": classifier.ood,
                         "explanations": CAMS_OUTPUT in meta.outputs},
        "service": {"version": __version__, "max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms,
                    "max_images": config.max_images, "max_upload_bytes": config.max_upload_bytes,
                    "max_pixels": config.max_pixels, "top_k": config.top_k, "formats": list(ACCEPTED_FORMATS),
                    "auth": bool(config.api_key)},
    }


def create_app(classifier: Classifier, config: ServeConfig | None = None) -> FastAPI:
    """The service over a loaded classifier; run it with :func:`cellsdk.serve.serve` or any ASGI server.

    The micro-batcher and the decoding threads start with the app's lifespan and, on shutdown, finish every
    admitted image before they stop.

    Raises:
        ConfigError: an unusable ``config``.

    Examples:
        >>> from cellsdk import Classifier
        >>> sorted(route.path for route in create_app(Classifier.load()).routes if route.path.startswith("/v1"))
        ['/v1/count', '/v1/model', '/v1/predict']
    """
    config = (config or ServeConfig()).check()
    metrics = Metrics()
    state = ServiceState(classifier, config, metrics, _model_info(classifier, config))
    metrics.gauges.update({
        "cellsdk_queue_depth": ("Images waiting for a runtime call.",
                                lambda: state.batcher.queued if state.batcher else 0),
        "cellsdk_images_in_progress": ("Images admitted and not yet answered (decoding, queued or running).",
                                       lambda: state.batcher.admitted if state.batcher else 0),
        "cellsdk_ready": ("1 while the service takes requests.", lambda: 1 if state.ready else 0),
    })

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        state.pool = ThreadPoolExecutor(config.decode_workers, thread_name_prefix="cellsdk-decode")
        state.batcher = MicroBatcher(state.infer, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                                     max_queue=config.max_queue, on_batch=metrics.observe_batch)
        try:
            yield
        finally:
            state.draining = True
            await asyncio.get_running_loop().run_in_executor(None, state.batcher.close, config.drain_seconds)
            state.pool.shutdown(wait=True, cancel_futures=True)

    # /docs is Swagger UI served from the package (works offline, under a CSP); ReDoc would render the same
    # document from another megabyte of JavaScript, so it is not served (see /redoc)
    app = FastAPI(title="cellsdk", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=api_description(classifier, config))
    app.state.cellsdk = state
    add_error_handlers(app, metrics)
    # no key, nothing to check: the OpenAPI document then declares no security either (it says what is asked)
    protected = [Depends(_authoriser(config))] if config.api_key else []

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = correct_document(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes), config)
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]

    keeper = None
    if config.collect_dir is not None and config.keep_asked:
        from cellsdk.pool import CellPool

        keeper = CellPool(config.collect_dir)

    @app.post("/v1/predict", tags=["predict"], summary="Classify one or several images", dependencies=protected)
    async def predict(request: Request,
                      top_k: Annotated[int | None, Query(ge=1, le=1000, description="classes per image")] = None,
                      explain: Annotated[bool, Query(description="add each image's heat map for its predicted "
                                                                 "class (PNG data URL) and its summary")] = False
                      ) -> Response:
        """Images as multipart field ``files`` (one or several) or as the raw request body: one prediction
        each, in request order, with every field of ``cellsdk.Prediction``; with ``explain=true`` also
        ``heatmap`` (where the model looked: a transparent PNG data URL to lay over the image) and ``explanation``."""
        if explain and not state.model_info["capabilities"]["explanations"]:
            raise ApiError("explanations-unavailable", f"{state.model_info['name']} has no class-activation-map "
                           "output: serve a model converted by cellsdk-convert from a pooling -> linear head")
        # Draining (SIGTERM) does not refuse a request that got this far: the server stopped accepting
        # connections and requests at the signal, so this one arrived before it and is answered.
        batcher, pool = state.batcher, state.pool  # set together by the lifespan
        if batcher is None or pool is None:
            raise ApiError("not-ready", "the service is starting; retry shortly", headers={"Retry-After": "1"})
        uploads = await _read_uploads(request, config)
        with batcher.admit(len(uploads)) as ticket:  # ShuttingDownError (503) once the batcher has closed
            loop = asyncio.get_running_loop()
            outcomes = await asyncio.gather(*(loop.run_in_executor(pool, state.prepare, data, i, name)
                                              for i, (name, data) in enumerate(uploads)), return_exceptions=True)
            decoded: list[tuple[Any, tuple[int, int]]] = []
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
                decoded.append(outcome)
            results = await asyncio.wrap_future(ticket.submit([prepared for prepared, _ in decoded]))
        k = min(top_k or config.top_k, len(classifier.labels))
        extras: list[dict[str, Any]] = [{} for _ in results]
        if explain:
            extras = list(await asyncio.gather(*(loop.run_in_executor(pool, state.heatmap, p, grid, size)
                                                 for (p, grid), (_, size) in zip(results, decoded, strict=True))))
        if keeper is not None:  # --keep-asked: the lab's unlabelled pool (every upload decoded, so each is an image)
            await asyncio.gather(*(loop.run_in_executor(pool, keeper.keep, data) for _, data in uploads))
        body = {"model": {"name": state.model_info["name"], "sha256": state.model_info["sha256"]},
                "predictions": [{"name": name, **dataclasses.replace(p, top_k=p.top_k[:k]).to_dict(), **extra}
                                for (name, _), (p, _), extra in zip(uploads, results, extras, strict=True)]}
        return Response(json.dumps(body), media_type="application/json")

    @app.get("/v1/model", tags=["model"], summary="The model's metadata and verification record",
             dependencies=protected)
    async def model() -> dict[str, Any]:
        return state.model_info

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: the model is loaded and the service takes requests")
    async def readyz() -> dict[str, Any]:
        if not state.ready:
            raise ApiError("shutting-down" if state.draining else "not-ready",
                           "shutting down" if state.draining else "starting", headers={"Retry-After": "1"})
        return {"status": "ready"}

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=PlainTextResponse,
             dependencies=protected)
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    static = Path(str(resources.files("cellsdk.serve") / "static"))

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(static / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                            "Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return FileResponse(static / "docs.html", headers={"Content-Security-Policy": DOCS_POLICY,
                                                           "Cache-Control": "no-cache"})

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        raise ApiError("not-found", "ReDoc is not served: the API documentation is Swagger UI at /docs (served from "
                                    "the package, so it works offline), and the document itself is /openapi.json")

    from cellsdk.serve.fields import add_count_routes

    add_count_routes(app, classifier, protected, {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"},
                     static, config.max_upload_bytes)
    if config.collect_dir is not None:
        from cellsdk.serve.collect import Collection, add_review_routes

        add_review_routes(app, Collection(config.collect_dir, classifier.labels), protected,
                          {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"}, static,
                          config.max_upload_bytes, classifier)
    app.mount("/static", StaticFiles(directory=static), name="static")
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes, metrics=metrics)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(Observe, metrics=metrics, routes=ROUTES)
    return app


def _authoriser(config: ServeConfig) -> Callable[..., Awaitable[None]]:
    """A dependency that checks the API key (constant-time) when the service has one."""
    expected = (config.api_key or "").encode()

    async def authorise(key: Annotated[str | None, Depends(_KEY_HEADER)],
                        token: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        if not expected:
            return
        given = key or (token.credentials if token else None)
        if not given or not hmac.compare_digest(given.encode(), expected):
            raise ApiError("unauthorized", "this service needs its API key: send it as the X-API-Key header or as "
                                           "Authorization: Bearer <key>" if not given else "wrong API key",
                           headers={"WWW-Authenticate": 'Bearer realm="cellsdk"'})

    return authorise


async def _read_uploads(request: Request, config: ServeConfig) -> list[tuple[str | None, bytes]]:
    """The request's images as (cleaned name, bytes): multipart field ``files`` or the raw body."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        parser = MultiPartParser(request.headers, request.stream(), max_files=config.max_images, max_fields=16,
                                 max_part_size=64 * 1024)
        parser.spool_max_size = config.max_upload_bytes  # uploads stay in memory: no image is written to disk
        try:
            form = await parser.parse()
        except MultiPartException as err:
            if "too many files" in err.message.lower():
                raise ApiError("too-many-images", f"more than {config.max_images} images in one request; send "
                                                  "them in several requests") from None
            raise ApiError("bad-request", f"malformed multipart body: {err.message}") from None
        try:
            uploads: list[tuple[str | None, bytes]] = []
            for key, value in form.multi_items():
                if key not in IMAGE_FIELDS:
                    raise ApiError("bad-request", f"unexpected form field {display_name(key)!r}: send images as "
                                                  "the multipart field 'files'")
                if not isinstance(value, UploadFile):
                    raise ApiError("bad-request", f"form field {key!r} holds text, not a file: attach the image "
                                                  "as a file")
                uploads.append((display_name(value.filename), await value.read()))
        finally:
            await form.close()
        if not uploads:
            raise ApiError("bad-request", "no image in the request: send images as the multipart field 'files'")
    else:  # whatever the Content-Type says (curl -d and urllib send x-www-form-urlencoded): the bytes decide
        body = await request.body()
        if not body:
            raise ApiError("bad-request", "empty request body: send the image as the raw body or as the "
                                          "multipart field 'files'")
        uploads = [(None, body)]
    if len(uploads) > config.max_images:
        raise ApiError("too-many-images", f"{len(uploads)} images in one request, the limit is {config.max_images}; "
                                          "send them in several requests")
    return uploads
