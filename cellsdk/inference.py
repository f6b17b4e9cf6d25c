"""The one inference path: prepare an image (decode, checks, preprocess), run prepared images (backend, softmax,
guard) — public and typed, used by :class:`~cellsdk.Classifier`, explanations, the batch engine and the service.

Each caller composes the same two steps: :meth:`Inference.prepare` (thread-safe, runs on decoding threads) turns
one image into a :class:`PreparedImage`; :meth:`Inference.run` turns a list of them into one runtime call and one
:class:`~cellsdk.Prediction` each (with the guard's verdict), and also returns the model's outputs (class
activation maps, features) for those who need them. Test-time augmentation plugs in as :class:`Views`
(:func:`cellsdk.tta.tta_views`); the core itself runs each image as it is.

Examples:
    >>> from cellsdk import Classifier
    >>> inference = Classifier.load(self_check=False).inference
    >>> prepared = inference.prepare("samples/pbc_raw/ig/MMY_163947.jpg")
    >>> prepared.array.shape
    (3, 128, 128)
    >>> result = inference.run([prepared])
    >>> result.predictions[0].label, sorted(result.outputs)
    ('ig', ['cams', 'features', 'logits'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cellsdk.backends import Backend
from cellsdk.errors import ConfigError, MetadataError
from cellsdk.guard import GUARD_MODES, Assessment, Guard
from cellsdk.guard.input_checks import measure
from cellsdk.metadata import ModelMetadata
from cellsdk.metrics import softmax
from cellsdk.prediction import Prediction
from cellsdk.preprocessing import ImageSource, load_image, prepare_image, to_input_array

__all__ = ["IDENTITY", "Inference", "PreparedImage", "RunResult", "Views"]


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the model.

    Attributes:
        array: float32 ``3 x H x W``, preprocessed exactly as in training.
        stats: the input-check statistics of the prepared 8-bit image (:func:`cellsdk.guard.input_checks.measure`),
            or None when the model's guard has no input checks.
    """

    array: np.ndarray
    stats: Mapping[str, float] | None = None


@dataclass(frozen=True)
class RunResult:
    """What one :meth:`Inference.run` gave.

    Attributes:
        predictions: one per prepared image, in order.
        outputs: every output of the model by name (``logits``, ``features``, ``cams``), for every view that ran.
    """

    predictions: list[Prediction]
    outputs: dict[str, np.ndarray]


class Views(Protocol):
    """How a run turns each image into views and back (test-time augmentation; see :mod:`cellsdk.tta`)."""

    def expand(self, batch: np.ndarray) -> np.ndarray:
        """``N x C x H x W`` to ``(N * views) x C x H x W``, each image followed by its other views.

        Examples:
            >>> IDENTITY.expand(np.zeros((2, 3, 4, 4))).shape
            (2, 3, 4, 4)
        """

    def merge(self, values: np.ndarray) -> np.ndarray:
        """Per-view rows back to one row per image (their mean).

        Examples:
            >>> IDENTITY.merge(np.ones((2, 5))).shape
            (2, 5)
        """

    def first(self, values: np.ndarray) -> np.ndarray:
        """Each image's own (untransformed) row of per-view rows.

        Examples:
            >>> IDENTITY.first(np.arange(3)).tolist()
            [0, 1, 2]
        """


class _AsItIs:
    """Each image as it is: one view."""

    def expand(self, batch: np.ndarray) -> np.ndarray:
        return batch

    def merge(self, values: np.ndarray) -> np.ndarray:
        return values

    def first(self, values: np.ndarray) -> np.ndarray:
        return values


#: the views of a run without test-time augmentation
IDENTITY: Views = _AsItIs()


class Inference:
    """A loaded model's inference path: backend, metadata, guard. Safe to call from several threads.

    Args:
        backend: the loaded runtime.
        metadata: the model's metadata (labels, preprocessing, outputs).
        path: the artefact (named in errors).
        guard: the OOD guard, or None (every prediction ``ok``).
        ood: ``flag``, ``reject`` (a label that is not ``ok`` is withheld) or ``off``.
        top_k: how many classes a prediction lists unless a run says otherwise.

    Raises:
        ConfigError: an unknown ``ood`` mode.
    """

    def __init__(self, backend: Backend, metadata: ModelMetadata, *, path: Path, guard: Guard | None = None,
                 ood: str = "flag", top_k: int = 3) -> None:
        if ood not in GUARD_MODES:
            raise ConfigError(f"ood={ood!r}: use one of {', '.join(GUARD_MODES)}")
        self.backend = backend
        self.metadata = metadata
        self.path = path
        self.guard = guard
        self.ood = ood
        self.top_k = top_k
        self.labels: tuple[str, ...] = metadata.labels
        self._spec = metadata.preprocessing

    def prepare(self, image: ImageSource, *, pixel_size: float | None = None) -> PreparedImage:
        """Decode, check and preprocess one image (a path, bytes, a PIL image or an array).

        ``pixel_size`` (µm per pixel) rescales an image taken at another magnification to the training images'
        (for models that record theirs: ``Preprocessing.pixel_size_um``).

        Raises:
            InvalidImageError: the image cannot be read or used, naming it.

        Examples:
            >>> from cellsdk import Classifier
            >>> Classifier.load(self_check=False).inference.prepare(np.zeros((64, 64, 3), np.uint8)).array.shape
            (3, 128, 128)
        """
        pixels = np.asarray(prepare_image(load_image(image), self._spec, pixel_size=pixel_size))  # used twice
        stats = self.guard is not None and self.guard.input_checks is not None
        return PreparedImage(to_input_array(pixels, self._spec), measure(pixels) if stats else None)

    def run(self, prepared: Sequence[PreparedImage], *, top_k: int | None = None,
            views: Views = IDENTITY) -> RunResult:
        """One runtime call for ``prepared`` (every view of every image), then the guard on each image as it is
        with the probabilities averaged over its views.

        Raises:
            MetadataError: the model's outputs do not match its metadata.

        Examples:
            >>> from cellsdk import Classifier
            >>> inference = Classifier.load(self_check=False).inference
            >>> result = inference.run([inference.prepare("samples/pbc_raw/ig/MMY_163947.jpg")], top_k=1)
            >>> result.predictions[0].top_k[0][0], result.outputs["cams"].shape[:2]
            ('ig', (1, 8))
        """
        outputs = self.run_outputs(views.expand(np.stack([p.array for p in prepared])))
        logits = outputs["logits"].astype(np.float64, copy=False)
        probabilities = views.merge(self.probabilities_of(logits))
        verdicts: list[Assessment] | None = None
        if self.guard is not None:
            features = outputs.get("features")
            verdicts = self.guard.assess(views.first(logits), None if features is None else views.first(features),
                                         [p.stats for p in prepared], probabilities)
        return RunResult([self.prediction(row, top_k, verdicts[i] if verdicts else None)
                          for i, row in enumerate(probabilities)], outputs)

    def probabilities(self, batch: np.ndarray, views: Views = IDENTITY) -> np.ndarray:
        """Class probabilities of a preprocessed ``N x 3 x H x W`` batch, averaged over ``views``.

        Examples:
            >>> from cellsdk import Classifier
            >>> inference = Classifier.load(self_check=False).inference
            >>> inference.probabilities(np.zeros((2, 3, 128, 128), np.float32)).sum(axis=1).round(6).tolist()
            [1.0, 1.0]
        """
        return views.merge(self.probabilities_of(self.run_outputs(views.expand(batch))["logits"]))

    def probabilities_of(self, logits: np.ndarray) -> np.ndarray:
        """The model's outputs as probabilities (softmax of logits; models that output probabilities as they are).

        Examples:
            >>> from cellsdk import Classifier
            >>> Classifier.load(self_check=False).inference.probabilities_of(np.zeros((1, 8))).round(3).tolist()
            [[0.125, 0.125, 0.125, 0.125, 0.125, 0.125, 0.125, 0.125]]
        """
        logits = logits.astype(np.float64, copy=False)
        return softmax(logits) if self.metadata.output == "logits" else logits

    def run_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model by name for a preprocessed batch, split to the runtime's batch limit.

        Raises:
            MetadataError: the model's outputs do not match its metadata.

        Examples:
            >>> from cellsdk import Classifier
            >>> outputs = Classifier.load(self_check=False).inference.run_outputs(np.zeros((2, 3, 128, 128), np.float32))
            >>> {name: array.shape for name, array in outputs.items()}
            {'logits': (2, 8), 'features': (2, 1280), 'cams': (2, 8, 4, 4)}
        """
        chunk, names = self.backend.max_batch, self.metadata.outputs
        if chunk is None or len(batch) <= chunk:
            parts = [self.backend.run_all(batch)]
        else:
            parts = [self.backend.run_all(batch[i:i + chunk]) for i in range(0, len(batch), chunk)]
        if any(len(p) < len(names) for p in parts):
            raise MetadataError(f"{self.path}: the model has {len(parts[0])} outputs but its metadata lists "
                                f"{len(names)} ({', '.join(names)}); re-convert it")
        outputs = {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}
        logits = outputs["logits"]
        if logits.ndim != 2 or logits.shape != (len(batch), len(self.labels)):
            raise MetadataError(
                f"{self.path}: model returned shape {tuple(logits.shape)} for {len(batch)} images, "
                f"expected ({len(batch)}, {len(self.labels)}) for the {len(self.labels)} labels"
            )
        return outputs

    def prediction(self, probabilities: np.ndarray, top_k: int | None = None,
                   verdict: Assessment | None = None) -> Prediction:
        """One image's :class:`~cellsdk.Prediction` from its class probabilities and the guard's verdict.

        Examples:
            >>> from cellsdk import Classifier
            >>> inference = Classifier.load(self_check=False).inference
            >>> inference.prediction(np.eye(8)[3], top_k=1).top_k
            (('ig', 1.0),)
        """
        verdict = verdict or Assessment()
        labels = self.labels
        best = int(np.argmax(probabilities))
        common: dict[str, Any] = {
            "confidence": float(probabilities[best]), "status": verdict.status, "ood_score": verdict.ood_score,
            "reasons": verdict.reasons,
            "probabilities": {label: float(p) for label, p in zip(labels, probabilities, strict=True)}}
        if self.ood == "reject" and verdict.status != "ok":
            return Prediction(label=None, index=None, top_k=(), **common)
        k = min(top_k or self.top_k, len(labels))
        order = np.argsort(-probabilities, kind="stable")[:k]
        return Prediction(label=labels[best], index=best,
                          top_k=tuple((labels[int(i)], float(probabilities[i])) for i in order), **common)
