"""Review and collect: a technician confirms or corrects each answer; the cells land in a folder adapt takes.

With ``cellsdk serve --collect DIR`` (an API key is required: the folder becomes training data) the service
adds a review page (``/review``) and two routes:

* ``POST /v1/review?label=L&predicted=P&name=N`` with the image as the raw body: the image (its bytes, unchanged)
  is saved as ``DIR/L/<sha256[:16]><ext>``; one JSON line per decision goes to ``DIR/review.jsonl``. Reviewing the
  same image again moves it to its new label (the last decision counts).
* ``GET /v1/review``: the labels and how many cells each holds.

``DIR`` is then a class-folder dataset: ``cellsdk adapt CHECKPOINT DIR --out RUN``.

Examples:
    >>> import tempfile
    >>> box = Collection(tempfile.mkdtemp(), ("lymphocyte", "monocyte"))
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> data = io.BytesIO(); Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(data, "PNG")
    >>> box.save(data.getvalue(), "monocyte", predicted="lymphocyte", name="a.png")["saved"]
    'monocyte/8cec428eef787fc5.png'
    >>> box.counts()
    {'lymphocyte': 0, 'monocyte': 1}
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import Query, Request
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image

from cellsdk.errors import ConfigError, InvalidImageError
from cellsdk.pool import cell_file_name, require_writable
from cellsdk.preprocessing import load_image
from cellsdk.serve.problems import ApiError

__all__ = ["REVIEW_LOG", "Collection", "ReviewQueue", "add_review_routes"]

REVIEW_LOG = "review.jsonl"


class Collection:
    """The folder reviewed cells are saved to, one subfolder per label.

    Raises:
        ConfigError: the folder cannot be created or written.
    """

    def __init__(self, root: str | os.PathLike, labels: Sequence[str]):
        self.root = Path(root)
        self.labels = tuple(labels)
        self._lock = threading.Lock()
        require_writable(self.root, self.root)

    def save(self, data: bytes, label: str, *, predicted: str | None = None, name: str | None = None,
             confidence: float | None = None) -> dict[str, Any]:
        """Save one reviewed image under ``label`` (moving an earlier decision on the same image).

        Raises:
            InvalidImageError: the bytes are not an image cellsdk can read.
            ConfigError: ``label`` is not one of the model's labels.

        Examples:
            >>> import tempfile
            >>> Collection(tempfile.mkdtemp(), ("a",)).save(b"not an image", "a")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            cellsdk.errors.InvalidImageError: the reviewed image: ...
        """
        if label not in self.labels:
            raise ConfigError(f"label {label!r} is not one of the model's labels ({', '.join(self.labels)})")
        load_image(data, name=name or "the reviewed image")  # refuse what the model could not read
        kind = Image.open(io.BytesIO(data)).format or "PNG"
        file_name = cell_file_name(data, kind)
        target = self.root / label / file_name
        with self._lock:
            moved_from = None
            for other in self.labels:
                earlier = self.root / other / file_name
                if other != label and earlier.exists():
                    earlier.unlink()
                    moved_from = other
                    try:
                        earlier.parent.rmdir()  # an empty class folder would stop cellsdk adapt
                    except OSError:
                        pass
            target.parent.mkdir(exist_ok=True)
            if not target.exists():
                tmp = target.with_name(f".{file_name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "file": f"{label}/{file_name}", "name": name,
                      "label": label, "predicted": predicted, "confidence": confidence,
                      "decision": "confirmed" if predicted == label else "corrected", "moved_from": moved_from}
            with open(self.root / REVIEW_LOG, "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
        return {"saved": record["file"], "decision": record["decision"], "counts": self.counts()}

    def counts(self) -> dict[str, int]:
        """Cells per label so far.

        Examples:
            >>> import tempfile
            >>> Collection(tempfile.mkdtemp(), ("a", "b")).counts()
            {'a': 0, 'b': 0}
        """
        return {label: sum(1 for p in (self.root / label).glob("*") if not p.name.startswith("."))
                if (self.root / label).is_dir() else 0 for label in self.labels}



class ReviewQueue:
    """The unlabelled pool (``DIR/unlabelled/``, :mod:`cellsdk.pool`) less the cells already reviewed, ranked by
    :func:`cellsdk.suggest.rank_for_labelling` with the served model (recomputed when the pool or the reviews
    change).

    Examples:
        >>> import tempfile
        >>> from cellsdk import Classifier
        >>> clf = Classifier.load(self_check=False)
        >>> queue = ReviewQueue(Collection(tempfile.mkdtemp(), clf.labels), clf)
        >>> queue.pool.keep(open("samples/pbc_raw/ig/MMY_163947.jpg", "rb").read()).parent.name
        'unlabelled'
        >>> [cell["predicted"] for cell in queue.cells(5)["cells"]]
        ['ig']
    """

    def __init__(self, collection: Collection, classifier: Any):
        from cellsdk.pool import CellPool

        self.collection, self.classifier = collection, classifier
        self.pool = CellPool(collection.root)
        self._lock = threading.Lock()
        self._cache: tuple[tuple[str, ...], list[dict[str, Any]]] | None = None

    def waiting(self) -> list[Path]:
        """The pool's cells no label folder holds yet.

        Examples:
            >>> queue.waiting()  # doctest: +SKIP
            [PosixPath('collected/unlabelled/0e873916c2dfba57.jpg')]
        """
        reviewed = {p.name for label in self.collection.labels if (self.collection.root / label).is_dir()
                    for p in (self.collection.root / label).iterdir()}
        return [p for p in self.pool.cells() if p.name not in reviewed]

    def cells(self, n: int) -> dict[str, Any]:
        """The first ``n`` waiting cells in the order to label them (uncertain and diverse first, every predicted
        class represented), with the model's label and uncertainty.

        Examples:
            >>> queue.cells(2)  # doctest: +SKIP
            {'pool': 3, 'waiting': 3, 'cells': [{'file': '0e873916c2dfba57.jpg', 'predicted': 'ig', ...}, ...]}
        """
        from cellsdk.suggest import suggest_cells

        waiting = self.waiting()
        key = tuple(p.name for p in waiting)
        with self._lock:
            if self._cache is None or self._cache[0] != key:
                ranked: list[dict[str, Any]] = []
                if waiting:
                    picked = suggest_cells(self.classifier, waiting, len(waiting))
                    ranked = [{"file": Path(row["path"]).name, "predicted": row["predicted"],
                               "uncertainty": row["uncertainty"]} for row in picked.rows()]
                self._cache = (key, ranked)
            ranked = self._cache[1]
        return {"pool": len(self.pool), "waiting": len(waiting), "cells": ranked[:n]}


def add_review_routes(app: Any, collection: Collection, protected: list[Any], page_headers: dict[str, str],
                      static: Path, max_bytes: int, classifier: Any = None) -> None:
    """``GET /review`` (the page), ``POST /v1/review`` (save a decision) and ``GET /v1/review`` (the counts); with
    the served ``classifier``, ``GET /v1/review/queue`` (the unlabelled pool, most useful labels first) and
    ``GET /v1/review/pool/{file}`` (one pool cell's image).

    Examples:
        >>> add_review_routes(app, Collection("collected", labels), protected, {}, static, 32 << 20)  # doctest: +SKIP
    """
    @app.get("/review", include_in_schema=False)
    async def review_page() -> Any:
        return FileResponse(static / "review.html", headers=page_headers)

    queue = ReviewQueue(collection, classifier) if classifier is not None else None
    pool_name = re.compile(r"^[0-9a-f]{16}\.[a-z]{3,4}$")

    @app.get("/v1/review/queue", tags=["review"], summary="The unlabelled pool's cells, most useful labels first",
             dependencies=protected)
    async def review_queue(n: int = Query(50, ge=1, le=1000, description="cells to list")) -> dict[str, Any]:
        if queue is None:
            raise ApiError("not-found", "no review queue: the service was started without a model to rank with")
        return await asyncio.to_thread(queue.cells, n)

    @app.get("/v1/review/pool/{file}", tags=["review"], summary="One unlabelled pool cell's image",
             dependencies=protected)
    async def review_pool_cell(file: str) -> Any:
        if queue is None or not pool_name.match(file) or not (queue.pool.folder / file).is_file():
            raise ApiError("not-found", f"{file!r} is not a cell of the unlabelled pool (see GET /v1/review/queue)")
        return FileResponse(queue.pool.folder / file)

    @app.get("/v1/review", tags=["review"], summary="The collect folder: labels and cells per label",
             dependencies=protected)
    async def review_counts() -> dict[str, Any]:
        return {"folder": collection.root.name, "labels": list(collection.labels), "counts": collection.counts(),
                "pool": len(queue.pool) if queue is not None else 0}

    @app.post("/v1/review", tags=["review"], summary="Save a reviewed image under its confirmed or corrected label",
              dependencies=protected)
    async def review(request: Request,
                     label: str = Query(description="the label the technician chose"),
                     predicted: str | None = Query(None, description="what the model said"),
                     confidence: float | None = Query(None, ge=0, le=1),
                     name: str | None = Query(None, max_length=255, description="the file's name, for the log")
                     ) -> Any:
        data = await request.body()
        if not data:
            raise ApiError("bad-request", "no image: send the image's bytes as the request body")
        if len(data) > max_bytes:
            raise ApiError("too-large", f"the image is larger than {max_bytes} bytes")
        if label not in collection.labels:
            raise ApiError("bad-request", f"label {label!r} is not one of the model's labels: "
                                          f"{', '.join(collection.labels)}")
        try:
            saved = collection.save(data, label, predicted=predicted, name=name, confidence=confidence)
        except InvalidImageError as err:
            raise ApiError("bad-image", str(err)) from None
        return JSONResponse(saved)
