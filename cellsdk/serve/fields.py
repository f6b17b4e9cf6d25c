"""Fields of view over HTTP: ``POST /v1/count`` (a field in, its white cells out) and the count page ``/count``.

``POST /v1/count`` takes one field as the raw request body (any image cellsdk reads; a multi-page TIFF's first
page) and answers its white cells — box, ``cut_by_edge``, label, confidence, status, OOD score, reasons, and the
crop the classifier saw as a JPEG data URL — with the counts per label and the ruler (the red-cell diameter:
``?rbc_diameter=PX``, or the median measured on the service's last 50 fields, :class:`RulerMemory`: one camera,
one magnification). The work (decode, locate, crop, one runtime call) runs on a worker
thread, so the service keeps answering.

``/count`` is the page a technician uses: choose fields, see each with its boxes and a gallery of its cells, and
confirm or correct each cell (the review page's keys: a click, or ``1``-``9`` then ``Enter``); the counts update
as they go. With ``cellsdk serve --collect DIR`` each decision is also saved through ``POST /v1/review`` into the
collect folder that ``cellsdk adapt`` takes.

Examples:
    >>> from cellsdk import Classifier
    >>> from PIL import Image
    >>> field = Image.open("samples/pbc_raw/ig/MMY_163947.jpg").convert("RGB")
    >>> answer = count_answer(Classifier.load(), field, rbc_diameter=74.0)
    >>> [(cell["label"], cell["status"]) for cell in answer["cells"]], answer["counts"]["ig"]
    ([('ig', 'ok')], 1)
"""

from __future__ import annotations

import asyncio
import base64
import io
import statistics
import threading
from collections import deque
from pathlib import Path
from typing import Any

from fastapi import Query, Request
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image

from cellsdk.errors import InvalidImageError
from cellsdk.fields.count import CountConfig, classify_field
from cellsdk.fields.locate import FieldScale, measure_scale
from cellsdk.preprocessing import load_image
from cellsdk.serve.problems import ApiError

__all__ = ["RulerMemory", "add_count_routes", "count_answer"]


class RulerMemory:
    """The service's ruler: one camera, one magnification, so a field's red-cell diameter is the median of the
    last ``size`` fields measured (its own included), steadier than one field's measurement alone.

    Examples:
        >>> memory = RulerMemory(3)
        >>> [memory.add(d).rbc_diameter for d in (70.0, 90.0, 74.0, 76.0)]
        [70.0, 80.0, 74.0, 76.0]
    """

    def __init__(self, size: int = 50) -> None:
        self._seen: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, diameter: float) -> FieldScale:
        """Remember a measured diameter and answer the ruler to use now.

        Examples:
            >>> RulerMemory().add(72.0).rbc_diameter
            72.0
        """
        with self._lock:
            self._seen.append(diameter)
            return FieldScale(float(statistics.median(self._seen)), True)


def _data_url(crop: Image.Image) -> str:
    buffer = io.BytesIO()
    crop.resize((128, 128), Image.Resampling.BILINEAR).save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def count_answer(classifier: Any, image: Image.Image, rbc_diameter: float | None = None, *,
                 memory: RulerMemory | None = None) -> dict[str, Any]:
    """What ``POST /v1/count`` answers for one decoded field (the ruler: ``rbc_diameter``, or the field's own
    measurement, through ``memory`` where the service keeps one).

    Examples:
        >>> from cellsdk import Classifier
        >>> count_answer(Classifier.load(), Image.new("RGB", (64, 48), (230, 220, 220)))["cells"]
        []
    """
    ruler = FieldScale(rbc_diameter, True) if rbc_diameter else measure_scale(image)
    if rbc_diameter is None and memory is not None and ruler.measured:
        ruler = memory.add(ruler.rbc_diameter)
    found = classify_field(classifier, image, ruler, CountConfig())
    counts = dict.fromkeys(classifier.labels, 0)
    cells = []
    for index, (box, crop, prediction) in enumerate(found):
        label = prediction.label or ""
        if label in counts:
            counts[label] += 1
        cells.append({"cell": index, "box": list(box.as_tuple()), "cut_by_edge": box.cut_by_edge, "label": label,
                      "confidence": round(float(prediction.confidence), 4), "status": prediction.status,
                      "ood_score": None if prediction.ood_score is None else round(float(prediction.ood_score), 4),
                      "reasons": list(prediction.reasons), "crop": _data_url(crop)})
    return {"field": {"width": image.width, "height": image.height},
            "ruler": {"rbc_diameter_px": round(ruler.rbc_diameter, 2), "measured": ruler.measured},
            "cells": cells, "counts": counts, "flagged": sum(1 for cell in cells if cell["status"] != "ok")}


def add_count_routes(app: Any, classifier: Any, protected: list[Any], page_headers: dict[str, str], static: Path,
                     max_bytes: int) -> None:
    """``POST /v1/count`` and the page ``GET /count``.

    Examples:
        >>> add_count_routes(app, classifier, protected, {}, static, 32 << 20)  # doctest: +SKIP
    """
    memory = RulerMemory()

    @app.get("/count", include_in_schema=False)
    async def count_page() -> Any:
        return FileResponse(static / "count.html", headers=page_headers)

    @app.post("/v1/count", tags=["count"], summary="Find, classify and count the white cells of one field of view",
              dependencies=protected)
    async def count(request: Request,
                    rbc_diameter: float | None = Query(None, gt=0, le=10000,
                                                       description="the field's red-cell diameter in pixels, if "
                                                                   "known [default: the median measured on the "
                                                                   "service's last 50 fields]"),
                    name: str | None = Query(None, max_length=255, description="the field's name, for messages")
                    ) -> Any:
        """The field's image as the raw request body: its white cells (box, label, confidence, guard status, the
        crop the classifier saw), the counts per label and the ruler."""
        data = await request.body()
        if not data:
            raise ApiError("bad-request", "no field: send the image's bytes as the request body")
        if len(data) > max_bytes:
            raise ApiError("too-large", f"the field is larger than {max_bytes} bytes")

        def work() -> dict[str, Any]:
            try:
                image = load_image(data, name=name or "the field")
            except InvalidImageError as err:
                raise ApiError("bad-image", str(err)) from None
            return count_answer(classifier, image, rbc_diameter, memory=memory)

        return JSONResponse(await asyncio.to_thread(work))
