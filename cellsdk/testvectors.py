"""Test vectors an artefact carries: real held-out images and the fp32 reference's outputs on them (torch-free).

``cellsdk-convert`` embeds in every artefact's metadata (``test_vectors``, schema 5) a small class-balanced
set of held-out images — the encoded bytes as the runtime reads them, so decoding and preprocessing are
checked too — with the fp32 PyTorch model's logits, features (the OOD guard's input) and class activation maps
on exactly those bytes, and the thresholds of the gate the artefact passed. On any machine the artefact can
then check itself (:mod:`cellsdk.artefacts.selfcheck`) without the checkpoint, the data or torch.

Sizes: at most 10 % of the artefact or 400 KB of metadata, whichever is smaller (:data:`MAX_BYTES`,
:data:`MAX_SHARE`); the converter keeps as many images as fit (:func:`cellsdk.converters.testvectors.fit`).

Examples:
    >>> import numpy as np
    >>> vectors = TestVectors(images=(b"\\x89PNG...",), media_types=("image/png",), ids=("a.png",), targets=(0,),
    ...                       logits=np.zeros((1, 2), np.float32))
    >>> TestVectors.from_dict(vectors.to_dict()).ids
    ('a.png',)
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cellsdk.arrays import encode_array
from cellsdk.errors import MetadataError

__all__ = ["FORMAT", "MAX_BYTES", "MAX_SHARE", "TestVectors", "size_budget"]

#: the version of the ``test_vectors`` record this cellsdk writes and reads
FORMAT = 1
#: the most bytes of metadata the vectors may take, and the largest share of the artefact
MAX_BYTES = 400_000
MAX_SHARE = 0.10
#: the stored precision of each reference output (logits exact enough for agreement and cosine; features and
#: maps are compared by cosine and the guard score, which float16 resolves far below their limits)
_DTYPES = {"logits": "float32", "features": "float16", "cams": "float16"}


def size_budget(artefact_bytes: int) -> int:
    """The bytes the vectors may take in an artefact of ``artefact_bytes``: min(10 %, 400 KB).

    Examples:
        >>> size_budget(4_400_000), size_budget(120_000)
        (400000, 12000)
    """
    return int(min(MAX_BYTES, MAX_SHARE * artefact_bytes))


@dataclass(frozen=True)
class TestVectors:
    """Images and the fp32 reference's outputs on them.

    Attributes:
        images: the encoded image files (JPEG / PNG bytes), as the runtime reads them.
        media_types: each image's type (``image/jpeg``, ``image/png``).
        ids: where each image came from (a file name of the held-out split, and how it was re-encoded, if it was).
        targets: each image's true class index.
        logits: the fp32 reference's logits, ``N x C``.
        features: its pooled features (``N x D``), for artefacts with a ``features`` output; else None.
        cams: its class activation maps (``N x C x h x w``), for artefacts with a ``cams`` output; else None.
        thresholds: the conversion gate's thresholds (:class:`cellsdk.converters.gate.VerifyConfig`).
        preprocessing: the preprocessing the reference saw (the artefact's own, whatever a caller overrides).
        expected_scores: this artefact's own OOD scores on the vectors where its gate passed (int8 moves the
            scores away from fp32's by an amount that depends on the quantizer; on another machine a correct
            artefact gives what it gave there), or None.
        expected_on: where ``expected_scores`` were computed (the machine key).
        reference: what computed the outputs (e.g. ``PyTorch eager fp32 (the source checkpoint)``).
    """

    __test__ = False  # not a pytest class, whatever its name

    images: tuple[bytes, ...]
    media_types: tuple[str, ...]
    ids: tuple[str, ...]
    targets: tuple[int, ...]
    logits: np.ndarray
    features: np.ndarray | None = None
    cams: np.ndarray | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    reference: str = "PyTorch eager fp32 (the source checkpoint)"
    expected_scores: np.ndarray | None = None
    expected_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        lengths = {len(self.media_types), len(self.ids), len(self.targets), len(self.logits)}
        for extra in (self.features, self.cams, self.expected_scores):
            if extra is not None:
                lengths.add(len(extra))
        if n == 0 or lengths != {n}:
            raise MetadataError(f"test_vectors: {n} images but outputs for {sorted(lengths)}: re-convert the model")

    def __len__(self) -> int:
        return len(self.images)

    def outputs(self) -> dict[str, np.ndarray]:
        """The reference outputs by name (``logits``, and ``features`` / ``cams`` where present), float64.

        Examples:
            >>> vectors = TestVectors((b"a",), ("image/png",), ("a",), (0,), np.array([[2.0, 0.0]]))
            >>> vectors.outputs()["logits"].dtype
            dtype('float64')
        """
        out = {"logits": np.asarray(self.logits, dtype=np.float64)}
        for name in ("features", "cams"):
            value = getattr(self, name)
            if value is not None:
                out[name] = np.asarray(value, dtype=np.float64)
        return out

    def subset(self, indices: list[int] | np.ndarray) -> TestVectors:
        """The vectors of ``indices`` only (the converter's way to fit a size budget).

        Examples:
            >>> vectors = TestVectors((b"a", b"b"), ("image/png",) * 2, ("a", "b"), (0, 1), np.eye(2))
            >>> vectors.subset([1]).ids
            ('b',)
        """
        idx = [int(i) for i in indices]

        def pick(value: Any) -> Any:
            return None if value is None else np.asarray(value)[idx]

        return TestVectors(tuple(self.images[i] for i in idx), tuple(self.media_types[i] for i in idx),
                           tuple(self.ids[i] for i in idx), tuple(self.targets[i] for i in idx), pick(self.logits),
                           pick(self.features), pick(self.cams), dict(self.thresholds), dict(self.preprocessing),
                           self.reference, pick(self.expected_scores), dict(self.expected_on))

    def with_expected(self, scores: np.ndarray | None, on: dict[str, Any]) -> TestVectors:
        """The same vectors with the artefact's own OOD scores on them (see ``expected_scores``).

        Examples:
            >>> vectors = TestVectors((b"a",), ("image/png",), ("a",), (0,), np.array([[2.0, 0.0]]))
            >>> vectors.with_expected(np.array([0.5]), {"cpu_class": "x86-64-avx2"}).expected_scores.tolist()
            [0.5]
        """
        return dataclasses.replace(self, expected_scores=None if scores is None else np.asarray(scores),
                                   expected_on=dict(on))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready ``test_vectors`` record (bytes and arrays base64, like the guard's statistics).

        Examples:
            >>> record = TestVectors((b"a",), ("image/png",), ("a",), (0,), np.array([[2.0, 0.0]])).to_dict()
            >>> TestVectors.from_dict(record).targets
            (0,)
        """
        record: dict[str, Any] = {
            "format": FORMAT, "reference": self.reference, "thresholds": dict(self.thresholds),
            "preprocessing": dict(self.preprocessing),
            "targets": [int(t) for t in self.targets],
            "images": [{"id": i, "media_type": m, "bytes": len(b), "base64": base64.b64encode(b).decode("ascii")}
                       for b, m, i in zip(self.images, self.media_types, self.ids, strict=True)],
        }
        for name, dtype in _DTYPES.items():
            value = getattr(self, name)
            if value is not None:
                record[name] = encode_array(value, dtype)
        if self.expected_scores is not None:
            record["expected"] = {"guard_scores": encode_array(self.expected_scores, "float32"), "on": self.expected_on}
        return record

    def nbytes(self) -> int:
        """The size of this record in the metadata document, in bytes.

        Examples:
            >>> TestVectors((b"a",), ("image/png",), ("a",), (0,), np.array([[2.0, 0.0]])).nbytes() > 0
            True
        """
        return len(json.dumps(self.to_dict(), sort_keys=True))

    @classmethod
    def from_dict(cls, record: Any) -> TestVectors:
        """Read a ``test_vectors`` record; MetadataError naming the problem if it is malformed.

        Examples:
            >>> TestVectors.from_dict({"images": []})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            cellsdk.errors.MetadataError: ...
        """
        from cellsdk.arrays import decode_array

        if not isinstance(record, dict):
            raise MetadataError("test_vectors must be a record: re-convert the model")
        version = record.get("format")
        if not isinstance(version, int) or version > FORMAT:
            raise MetadataError(f"test_vectors format {version!r} is newer than this cellsdk reads ({FORMAT}): "
                                "upgrade with pip install -U cellsdk")
        try:
            images = record["images"]
            blobs = tuple(base64.b64decode(i["base64"], validate=True) for i in images)
            arrays = {name: decode_array(record[name], f"test_vectors.{name}") if name in record else None
                      for name in _DTYPES}
            if arrays["logits"] is None:
                raise KeyError("logits")
            logits: np.ndarray = arrays["logits"]
            expected = record.get("expected") or {}
            scores = decode_array(expected["guard_scores"], "test_vectors.expected") if expected else None
            return cls(blobs, tuple(str(i["media_type"]) for i in images), tuple(str(i["id"]) for i in images),
                       tuple(int(t) for t in record["targets"]), logits, arrays["features"],
                       arrays["cams"], {str(k): float(v) for k, v in (record.get("thresholds") or {}).items()},
                       dict(record.get("preprocessing") or {}), str(record.get("reference", "")), scores,
                       dict(expected.get("on") or {}))
        except (KeyError, TypeError, ValueError) as err:
            raise MetadataError(f"test_vectors are malformed ({err}): re-convert the model") from None


def validate_record(record: Any) -> None:
    """The cheap structural check ModelMetadata makes (the arrays are decoded only when a self-check runs).

    Examples:
        >>> validate_record({"images": "not a list"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cellsdk.errors.MetadataError: ...
    """
    if record is None:
        return
    if not isinstance(record, dict) or not isinstance(record.get("format"), int) \
            or not isinstance(record.get("images"), list) or "logits" not in record:
        raise MetadataError("test_vectors must be a record with a 'format', 'images' and 'logits', or null")
