"""``Classifier``: one way to run a cellsdk model on any backend — a thin facade.

``Classifier.load(path)`` opens the artefact (:mod:`cellsdk.artefacts.resolve`), decides whether to trust it here
(:mod:`cellsdk.artefacts.trust`) and holds its :class:`~cellsdk.inference.Inference`; batches run through
:mod:`cellsdk.batch.engine`, explanations through :mod:`cellsdk.explain`, augmentation through :mod:`cellsdk.tta`.

Examples:
    >>> Classifier.load().predict("samples/pbc_raw/ig/MMY_163947.jpg").label  # the shipped model; or a file or folder
    'ig'
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellsdk._validate import require_int
from cellsdk.artefacts.cpu_records import CpuCheck, check_artefact
from cellsdk.artefacts.gate_status import Verification
from cellsdk.artefacts.resolve import DEFAULT_MODEL, default_model_path, open_artefact
from cellsdk.artefacts.selfcheck import OFF, SelfCheck
from cellsdk.artefacts.trust import establish_trust, gate_verification
from cellsdk.backends import Backend
from cellsdk.errors import ConfigError, MetadataError
from cellsdk.guard import GUARD_MODES, Guard
from cellsdk.inference import Inference
from cellsdk.metadata import ModelMetadata, Preprocessing
from cellsdk.prediction import Prediction
from cellsdk.preprocessing import ImageSource
from cellsdk.tta import check_mode, tta_views

if TYPE_CHECKING:
    from cellsdk.batch.engine import Item
    from cellsdk.explain import Explanation

__all__ = ["DEFAULT_MODEL", "Classifier", "Prediction", "default_model_path"]


class Classifier:
    """A loaded model: backend, metadata, preprocessing and guard. Safe to call from several threads.

    Use :meth:`load` to make one. ``inference`` is its :class:`~cellsdk.inference.Inference` (prepare and run);
    ``labels``, ``metadata``, ``backend`` (``backend_name``, ``device``), ``path`` and ``guard`` what it is; ``tta``
    its default augmentation; ``verification`` (the gate, :mod:`cellsdk.artefacts.gate_status`), ``cpu_check``
    (:mod:`cellsdk.artefacts.cpu_records`) and ``self_check`` (:mod:`cellsdk.artefacts.selfcheck`) whether to trust
    it here; ``chosen`` why a conversion folder's artefact was picked.
    """

    def __init__(self, backend: Backend, metadata: ModelMetadata, *, path: Path, top_k: int = 3,
                 chosen: str | None = None, cpu_check: CpuCheck | None = None, ood: str = "flag",
                 guard: Guard | None = None, verification: Verification | None = None, tta: str = "none",
                 self_check: SelfCheck | None = None) -> None:
        guard = None if ood == "off" else (guard if guard is not None else Guard.for_model(metadata, path.name))
        self.inference = Inference(backend, metadata, path=path, guard=guard, ood=ood, top_k=top_k)
        self.backend, self.metadata, self.path, self.ood = backend, metadata, path, ood
        self.default_top_k, self.chosen = top_k, chosen
        self.labels: tuple[str, ...] = metadata.labels
        self.backend_name, self.device = backend.name, backend.device
        self.tta = check_mode(tta)
        self.cpu_check = cpu_check if cpu_check is not None else check_artefact(metadata, path.name)
        self.self_check = self_check if self_check is not None else SelfCheck(OFF)
        self.verification = verification if verification is not None else gate_verification(path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, backend: str | None = None, device: str = "auto", *,
             labels: Sequence[str] | None = None, preprocessing: Preprocessing | Mapping[str, Any] | None = None,
             top_k: int = 3, strict: bool = False, ood: str = "flag", tta: str = "none", self_check: bool = True,
             **options: Any) -> Classifier:
        """Load a model file or a conversion output folder; with no path, the shipped blood-cell model.

        Args:
            path: None for the blood-cell classifier shipped with cellsdk (INT8 ONNX, 8 classes; MODEL_CARD.md),
                or ``.onnx``, ``.torchscript`` / ``.pt``, ``.xml`` (+ ``.bin``), ``.mlpackage`` / ``.mlmodel``, a
                folder with ``manifest.json`` (the fastest verified artefact that runs here), or a bioimage.io model
                package (``.zip``; :mod:`cellsdk.artefacts.bioimageio`).
            backend: force a backend by name (``onnxruntime``, ``openvino``, ``torchscript``, ``coreml``).
            device: ``auto``, ``cpu``, ``cuda`` / ``cuda:N``, ``tensorrt`` (onnxruntime), ``mps`` (torchscript),
                ``gpu`` / ``npu`` (openvino); ``cellsdk devices`` shows what works here.
            labels: class names, for models without cellsdk metadata (or to override it).
            preprocessing: the preprocessing, likewise.
            top_k: how many classes a :class:`Prediction` lists by default.
            strict: refuse (instead of warning once) an artefact that failed its verification gate, failed its
                self-check here, or is int8 and not verified on this CPU class (:mod:`cellsdk.artefacts.trust`).
            ood: the out-of-distribution guard: ``flag`` (status, score and reasons on every prediction),
                ``reject`` (as flag, and a label that is not ``ok`` is withheld) or ``off``.
            tta: test-time augmentation by default: ``none`` or ``dihedral`` (see :mod:`cellsdk.tta`).
            self_check: run the artefact's embedded test vectors on the first load on this machine key and cache
                the verdict (see :mod:`cellsdk.artefacts.selfcheck`); False skips it.
            **options: backend options, e.g. ``threads=2``, ``precision="f32"`` (openvino).

        Raises:
            CellSDKError: one line saying what to do: ModelNotFoundError, UnsupportedFormatError,
                BackendNotInstalledError, PlatformNotSupportedError, MetadataError, ConfigError,
                DeviceUnavailableError, FailedVerificationError, UnverifiedCpuError or SelfCheckError.

        Examples:
            >>> Classifier.load().labels[:3]
            ('basophil', 'eosinophil', 'erythroblast')
        """
        if ood not in GUARD_MODES:
            raise ConfigError(f"ood={ood!r}: use one of {', '.join(GUARD_MODES)}")
        check_mode(tta)
        opened = open_artefact(path, backend=backend, device=device, labels=labels, preprocessing=preprocessing,
                               options=options)
        require_int("top_k", top_k, minimum=1)
        verification = gate_verification(opened.path, opened.metadata, chosen=opened.chosen is not None)
        classifier = cls(opened.backend, opened.metadata, path=opened.path, top_k=top_k, chosen=opened.chosen,
                         ood=ood, verification=verification, tta=tta)
        trust = establish_trust(classifier, strict=strict, self_check=self_check, verification=verification)
        classifier.cpu_check, classifier.self_check = trust.cpu_check, trust.self_check
        return classifier

    @property
    def guard(self) -> Guard | None:
        """The model's OOD guard (None without one, or with ``ood="off"``); settable (e.g. other thresholds)."""
        return self.inference.guard

    @guard.setter
    def guard(self, guard: Guard | None) -> None:
        self.inference.guard = guard

    def __repr__(self) -> str:
        return (f"Classifier({self.backend.describe()}, {len(self.labels)} classes, "
                f"input {self.metadata.preprocessing.input_size} px, {self.path.name})")

    def with_preprocessing(self, preprocessing: Preprocessing | Mapping[str, Any]) -> Classifier:
        """The same loaded model with other preprocessing (e.g. ``without_crop()`` for pre-cropped images).

        Examples:
            >>> clf = Classifier.load()
            >>> clf.with_preprocessing(clf.metadata.preprocessing.without_crop()).metadata.preprocessing.crop_mode
            'none'
        """
        if isinstance(preprocessing, Mapping):
            preprocessing = Preprocessing.from_dict(preprocessing)
        size = self.metadata.preprocessing.input_size
        if preprocessing.input_size != size:
            raise MetadataError(f"the model takes {size} px inputs, not {preprocessing.input_size}")
        return Classifier(self.backend, self.metadata.replace(preprocessing=preprocessing), path=self.path,
                          top_k=self.default_top_k, chosen=self.chosen, cpu_check=self.cpu_check, ood=self.ood,
                          guard=self.guard, verification=self.verification, tta=self.tta, self_check=self.self_check)

    def predict(self, image: ImageSource, *, top_k: int | None = None, tta: str | None = None,
                pixel_size: float | None = None) -> Prediction:
        """Classify one image (a path, encoded bytes, a PIL image or a numpy array); ``tta`` as in :meth:`load`;
        ``pixel_size`` (µm per pixel) rescales it to the training images' (:meth:`Inference.prepare`).

        Raises:
            InvalidImageError: naming the input, if it is not a usable image.

        Examples:
            >>> Classifier.load().predict("samples/pbc_raw/ig/MMY_163947.jpg", top_k=2).top_k[0][0]
            'ig'
        """
        require_int("top_k", top_k, minimum=1, optional=True)
        views = tta_views(self.tta if tta is None else tta)
        prepared = self.inference.prepare(image, pixel_size=pixel_size)
        return self.inference.run([prepared], top_k=top_k, views=views).predictions[0]

    def predict_iter(self, images: Iterable[ImageSource], *, batch_size: int = 32, top_k: int | None = None,
                     errors: str = "raise", workers: int | None = None, tta: str | None = None,
                     pixel_size: float | None = None) -> Iterator[Item[Prediction]]:
        """Classify a stream of images through the pipelined engine (:mod:`cellsdk.batch.engine`), in input order:
        decoding on ``workers`` threads overlapped with batched inference, a few batches in memory at most.

        ``errors="skip"`` yields an unusable image's error in its ``Item`` instead of raising.

        Examples:
            >>> [item.ok for item in Classifier.load().predict_iter([b"not an image"], errors="skip")]
            [False]
        """
        from cellsdk.batch.engine import describe_source, run_pipeline

        require_int("top_k", top_k, minimum=1, optional=True)
        views = tta_views(self.tta if tta is None else tta)
        inference = self.inference
        return run_pipeline(images, prepare=lambda image: inference.prepare(image, pixel_size=pixel_size),
                            infer=lambda batch: inference.run(batch, top_k=top_k, views=views).predictions,
                            batch_size=batch_size, workers=workers, errors=errors, describe=describe_source)

    def predict_batch(self, images: Iterable[ImageSource], *, batch_size: int = 32, top_k: int | None = None,
                      errors: str = "raise", workers: int | None = None, tta: str | None = None
                      ) -> list[Prediction | None]:
        """Classify several images (see :meth:`predict_iter`); with ``errors="skip"`` an unusable one gives None.

        Examples:
            >>> [p.label for p in Classifier.load().predict_batch(["samples/pbc_raw/ig/MMY_163947.jpg"])]
            ['ig']
        """
        return [item.value for item in self.predict_iter(images, batch_size=batch_size, top_k=top_k, errors=errors,
                                                         workers=workers, tta=tta)]

    def predict_proba(self, images: ImageSource | Sequence[ImageSource], *, batch_size: int = 32,
                      workers: int | None = None, tta: str | None = None) -> np.ndarray:
        """Class probabilities: shape ``C`` for one image, ``N x C`` for a list (or an ``N x H x W x C`` array).

        Examples:
            >>> Classifier.load().predict_proba(np.zeros((2, 64, 64, 3), np.uint8)).shape
            (2, 8)
        """
        views = tta_views(self.tta if tta is None else tta)
        inference = self.inference
        if isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4):
            from cellsdk.batch.engine import describe_source, run_pipeline

            rows: list[np.ndarray] = [item.value for item in run_pipeline(  # type: ignore[misc]
                list(images), prepare=lambda image: inference.prepare(image).array,
                infer=lambda batch: list(inference.probabilities(np.stack(batch), views)),
                batch_size=batch_size, workers=workers, describe=describe_source)]
            return np.stack(rows) if rows else np.zeros((0, len(self.labels)))
        return inference.probabilities(inference.prepare(images).array[None], views)[0]  # type: ignore[arg-type]

    def explain(self, image: ImageSource, target: str | int | None = None, *, tta: str | None = None) -> Explanation:
        """Where the model looked: a heat map for ``target`` (default: the predicted class) over the raw image,
        torch-free, for about the cost of :meth:`predict` (see :mod:`cellsdk.explain`).

        Raises:
            ExplanationUnavailableError: the model has no class-activation-map output (what to do instead).
            ConfigError: an unknown target.

        Examples:
            >>> Classifier.load().explain("samples/pbc_raw/ig/MMY_163947.jpg", "neutrophil").heatmap.shape
            (363, 360)
        """
        from cellsdk.explain import explain_images

        return explain_images(self, [image], target, tta=tta)[0]

    def run_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model by name (``logits``, ``features``, ``cams``) for a preprocessed float32
        ``N x 3 x H x W`` batch (see :meth:`cellsdk.inference.Inference.run_outputs`).

        Examples:
            >>> sorted(Classifier.load().run_outputs(np.zeros((1, 3, 128, 128), np.float32)))
            ['cams', 'features', 'logits']
        """
        return self.inference.run_outputs(batch)

    def raw_outputs(self, batch: np.ndarray) -> np.ndarray:
        """The model's own outputs (logits, unless the metadata says probabilities) for a preprocessed batch.

        Examples:
            >>> Classifier.load().raw_outputs(np.zeros((3, 3, 128, 128), np.float32)).shape
            (3, 8)
        """
        return self.inference.run_outputs(batch)["logits"]
