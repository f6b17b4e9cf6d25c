"""``Classifier``: one way to run a cellsdk model on any backend.

``Classifier.load(path)`` picks the backend from the file (or the best
verified artefact of a conversion folder), reads the model's own metadata
(labels and preprocessing), and classifies paths, bytes, PIL images or numpy
arrays with exactly the preprocessing used in training.

Example:
    >>> from cellsdk import Classifier
    >>> clf = Classifier.load("runs/converted/model.int8.onnx")  # doctest: +SKIP
    >>> clf.predict("cell.jpg").label  # doctest: +SKIP
    'neutrophil'
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellsdk._validate import require_int
from cellsdk.backends import Backend, backend_for_path, get_backend
from cellsdk.cpu import UNVERIFIED, VERIFIED, CpuCheck, check_artefact, enforce, host_cpu
from cellsdk.engine import Item, run_pipeline
from cellsdk.errors import ConfigError, MetadataError, ModelNotFoundError
from cellsdk.guard import GUARD_MODES, Assessment, Guard
from cellsdk.input_checks import measure
from cellsdk.metadata import ModelMetadata, Preprocessing
from cellsdk.metrics import softmax
from cellsdk.prediction import Prediction
from cellsdk.preprocessing import ImageSource, load_image, prepare_image, to_input_array
from cellsdk.resolve import check_shapes, resolve_metadata
from cellsdk.selfcheck import OFF, SelfCheck, enforce_self_check, self_check
from cellsdk.tta import check_mode, expand, first_view, merge
from cellsdk.verification import PASSED, Verification, artefact_verification, enforce_verification

if TYPE_CHECKING:
    from cellsdk.explain import Explanation

__all__ = ["DEFAULT_MODEL", "Classifier", "Prediction", "default_model_path"]

log = logging.getLogger("cellsdk")

#: The file name of the reference blood-cell model shipped as package data (see MODEL_CARD.md).
DEFAULT_MODEL = "bloodmnist_effnet_lite0_128.int8.onnx"


def default_model_path() -> Path:
    """Where the shipped reference blood-cell model (INT8 ONNX) is installed.

    Raises:
        ModelNotFoundError: this installation lacks the package data.

    Example:
        >>> default_model_path().name
        'bloodmnist_effnet_lite0_128.int8.onnx'
    """
    path = Path(__file__).resolve().parent / "data" / DEFAULT_MODEL
    if not path.is_file():
        raise ModelNotFoundError(
            f"the default blood-cell model {DEFAULT_MODEL} is not installed with this cellsdk ({path}); "
            "reinstall cellsdk from a release or the repository, or pass a model path"
        )
    return path


_NOTED: set[str] = set()


def _describe_input(index: int, image: Any) -> str:
    """How an error names an input: a path is named by itself, anything else by its position."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else f"input {index}"


def _note_once(key: str, message: str) -> None:
    if key not in _NOTED:
        _NOTED.add(key)
        log.info(message)


class Classifier:
    """A loaded model: backend, metadata and preprocessing. Safe to call from several threads.

    Use :meth:`load` to make one.
    """

    def __init__(self, backend: Backend, metadata: ModelMetadata, *, path: Path, top_k: int = 3,
                 chosen: str | None = None, cpu_check: CpuCheck | None = None, ood: str = "flag",
                 guard: Guard | None = None, verification: Verification | None = None, tta: str = "none",
                 self_check: SelfCheck | None = None) -> None:
        if ood not in GUARD_MODES:
            raise ConfigError(f"ood={ood!r}: use one of {', '.join(GUARD_MODES)}")
        self.backend = backend
        #: whether this (int8) artefact was verified on this machine's CPU class (see cellsdk.cpu)
        self.cpu_check = cpu_check if cpu_check is not None else check_artefact(metadata, path.name)
        #: the artefact's self-check on this machine (see cellsdk.selfcheck; ``off`` unless loaded with it)
        self.self_check = self_check if self_check is not None else SelfCheck(OFF)
        #: whether this artefact passed cellsdk's verification gate (see cellsdk.verification)
        self.verification = verification if verification is not None else artefact_verification(path, metadata)
        self.metadata = metadata
        self.path = path
        self.default_top_k = top_k
        self.chosen = chosen
        self._spec = metadata.preprocessing
        self._labels = metadata.labels
        self._apply_softmax = metadata.output == "logits"
        self._chunk = backend.max_batch
        self._outputs = metadata.outputs
        #: flag, reject or off (see :class:`Prediction`'s ``status``)
        self.ood = ood
        #: test-time augmentation by default: none, or dihedral (the mean over 8 flips / rotations; see cellsdk.tta)
        self.tta = check_mode(tta)
        #: the model's OOD guard (None for models without one, or with ood="off"); see cellsdk.guard
        self.guard = None if ood == "off" else (guard if guard is not None else Guard.from_metadata(metadata))
        if self.guard is None and ood != "off":
            _note_once(str(path), f"cellsdk: {path.name} carries no OOD guard (converted without one, or not by "
                                  "cellsdk): every prediction has status ok; re-convert it with "
                                  "cellsdk-convert to add one")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        backend: str | None = None,
        device: str = "auto",
        *,
        labels: Sequence[str] | None = None,
        preprocessing: Preprocessing | Mapping[str, Any] | None = None,
        top_k: int = 3,
        strict: bool = False,
        ood: str = "flag",
        tta: str = "none",
        self_check: bool = True,
        **options: Any,
    ) -> Classifier:
        """Load a model file or a conversion output folder; with no path, the shipped blood-cell model.

        Args:
            path: None for the reference blood-cell classifier shipped with cellsdk (INT8 ONNX,
                eight BloodMNIST classes, 128 px, raw microscope images cropped to their central
                200 px; see MODEL_CARD.md), or ``.onnx``, ``.torchscript`` / ``.pt``, OpenVINO ``.xml`` (+ ``.bin``),
                ``.mlpackage`` / ``.mlmodel``, or a folder with ``manifest.json``
                (the fastest verified artefact that runs here is chosen; see ``chosen``).
            backend: force a backend by name (``onnxruntime``, ``openvino``, ``torchscript``, ``coreml``).
            device: ``auto``, ``cpu``, ``cuda`` / ``cuda:N``, ``tensorrt`` (onnxruntime), ``mps`` (torchscript),
                ``gpu`` / ``npu`` (openvino). A GPU that is not usable here raises DeviceUnavailableError naming
                what to install (``cellsdk devices`` shows every device); ``auto`` then uses the CPU.
            labels: class names, for models without cellsdk metadata (or to override it).
            preprocessing: the preprocessing, likewise.
            top_k: how many classes :class:`Prediction` lists by default.
            strict: refuse an artefact that failed cellsdk's verification gate (see ``verification``), or an
                int8 artefact not verified on (or failed on) this machine's CPU class (see :mod:`cellsdk.cpu`
                and ``cpu_check``), instead of warning once.
            ood: what the model's out-of-distribution guard does: ``flag`` (default: every
                :class:`Prediction` carries ``status``, ``ood_score`` and ``reasons``), ``reject`` (as flag,
                and the label of a prediction that is not ``ok`` is withheld) or ``off``.
            tta: test-time augmentation by default: ``none``, or ``dihedral`` (each image's class probabilities
                averaged over its 8 flips and right-angle rotations, in the same runtime call; the OOD guard
                scores the image as it is). Every predict method also takes ``tta=``. See :mod:`cellsdk.tta`.
            self_check: run the artefact's embedded test vectors the first time it is loaded on this machine
                key (CPU class or GPU, runtime and version, device, precision) and cache the verdict; a pass is
                silent (and stands for a CPU-class verification), a failure warns once with the figures and
                ``strict`` refuses it. False skips it. See :mod:`cellsdk.selfcheck` and ``self_check``.
            **options: backend options, e.g. ``threads=2``, ``precision="f32"`` (openvino),
                ``providers=[...]`` (onnxruntime), ``compute_units="CPU_AND_NE"`` (coreml).

        Raises:
            ModelNotFoundError, UnsupportedFormatError, BackendNotInstalledError,
            PlatformNotSupportedError, MetadataError, ConfigError, DeviceUnavailableError, UnverifiedCpuError,
            SelfCheckError: each with what to do.

        Example:
            >>> Classifier.load().labels[:3]
            ('basophil', 'eosinophil', 'erythroblast')
            >>> clf = Classifier.load("model.onnx", labels=["a", "b"],
            ...                       preprocessing=Preprocessing(input_size=64))  # doctest: +SKIP
        """
        if ood not in GUARD_MODES:
            raise ConfigError(f"ood={ood!r}: use one of {', '.join(GUARD_MODES)}")
        check_mode(tta)
        path = default_model_path() if path is None else Path(path)
        if not path.exists():
            raise ModelNotFoundError(f"{path}: no such model file or folder")
        chosen = None
        verified_options: dict[str, Any] = {}
        if path.is_dir() and path.suffix.lower() != ".mlpackage":
            from cellsdk.manifest import choose_artefact

            path, chosen, verified_options = choose_artefact(path, host_cpu().cpu_class, device)
            log.info("cellsdk: running %s", chosen)
        backend_cls = get_backend(backend) if backend else backend_for_path(path)
        backend_cls.check_options(verified_options)  # a bad manifest is refused even where the caller overrides it
        options = {**verified_options, **options}  # run it as it was verified, unless told otherwise
        instance = backend_cls(path, device=device, **backend_cls.check_options(options))
        metadata = resolve_metadata(path, instance, labels, preprocessing)
        check_shapes(path, instance, metadata)
        require_int("top_k", top_k, minimum=1)
        # a folder only ever picks an artefact its manifest lists as passed: no need to read the manifest again
        verification = Verification(PASSED, "manifest") if chosen else artefact_verification(path, metadata)
        enforce_verification(verification, name=str(path), strict=strict)
        check = check_artefact(metadata, path.name)
        classifier = cls(instance, metadata, path=path, top_k=top_k, chosen=chosen, cpu_check=check, ood=ood,
                         verification=verification, tta=tta)
        if self_check:
            classifier._check_itself(strict)
        else:
            enforce(check, strict=strict, key=str(path))
        return classifier

    def _check_itself(self, strict: bool) -> None:
        """The self-check on load: a pass stands for a CPU-class verification; a failure warns (or refuses)."""
        verdict = self.self_check = self_check(self)
        check = self.cpu_check
        caller = 4  # warnings name the line that called Classifier.load (1: enforce, 2: here, 3: load)
        if verdict.failed:
            enforce_self_check(verdict, name=str(self.path), strict=strict, stacklevel=caller)
            if check.status != UNVERIFIED:  # a failed gate record says more than the self-check; else it said it
                enforce(check, strict=strict, key=str(self.path), stacklevel=caller)
            return
        if verdict.status == "passed" and check.status == UNVERIFIED:
            self.cpu_check = CpuCheck(VERIFIED, check.cpu_class, "", check.records)
            return
        enforce(check, strict=strict, key=str(self.path), stacklevel=caller)

    # ------------------------------------------------------------------ properties

    @property
    def labels(self) -> tuple[str, ...]:
        """The class names, in output order."""
        return self._labels

    @property
    def backend_name(self) -> str:
        """The backend's registry name."""
        return self.backend.name

    @property
    def device(self) -> str:
        """The device the backend runs on."""
        return self.backend.device

    def __repr__(self) -> str:
        return (f"Classifier({self.backend.describe()}, {len(self._labels)} classes, "
                f"input {self._spec.input_size} px, {self.path.name})")

    def with_preprocessing(self, preprocessing: Preprocessing | Mapping[str, Any]) -> Classifier:
        """The same loaded model with other preprocessing (e.g. ``without_crop()`` for pre-cropped images).

        Example:
            >>> clf.with_preprocessing(clf.metadata.preprocessing.without_crop())  # doctest: +SKIP
        """
        if isinstance(preprocessing, Mapping):
            preprocessing = Preprocessing.from_dict(preprocessing)
        if preprocessing.input_size != self._spec.input_size:
            raise MetadataError(f"the model takes {self._spec.input_size} px inputs, not {preprocessing.input_size}")
        return Classifier(self.backend, self.metadata.replace(preprocessing=preprocessing), path=self.path,
                          top_k=self.default_top_k, chosen=self.chosen, cpu_check=self.cpu_check, ood=self.ood,
                          guard=self.guard, verification=self.verification, tta=self.tta, self_check=self.self_check)

    # ------------------------------------------------------------------ prediction

    def predict(self, image: ImageSource, *, top_k: int | None = None, tta: str | None = None) -> Prediction:
        """Classify one image: a path, encoded bytes, a PIL image or a numpy array.

        Args:
            image: the image.
            top_k: classes to list (default: the classifier's).
            tta: ``none`` or ``dihedral`` for this call (default: the classifier's ``tta``).

        Raises:
            InvalidImageError: naming the input, if it is not a usable image.
        """
        require_int("top_k", top_k, minimum=1, optional=True)
        return self._infer([self._prepare(image, self._wants_stats)], top_k, tta)[0]

    def predict_iter(self, images: Iterable[ImageSource], *, batch_size: int = 32, top_k: int | None = None,
                     errors: str = "raise", workers: int | None = None, tta: str | None = None
                     ) -> Iterator[Item[Prediction]]:
        """Classify a stream of images through the pipelined engine (:mod:`cellsdk.engine`), in input order.

        Decoding and preprocessing run on ``workers`` threads, overlapped with batched inference; at most a
        few batches are in memory, so an iterator over millions of paths is fine.

        Args:
            images: paths, bytes, PIL images or arrays, any iterable.
            batch_size: images per runtime call.
            top_k: classes each :class:`Prediction` lists.
            errors: ``raise`` (the first unusable image raises, naming it) or ``skip`` (its ``Item`` carries
                the error instead of a prediction, and the rest go on).
            workers: decoding threads (default: one per core but one, at least 1, at most 8).
            tta: ``none`` or ``dihedral`` (default: the classifier's ``tta``).

        Yields:
            :class:`cellsdk.engine.Item`: ``index``, ``source``, ``value`` (the Prediction) or ``error``.

        Example:
            >>> clf = Classifier.load()
            >>> [item.value.label for item in clf.predict_iter(["samples/pbc_raw/ig/MMY_163947.jpg"])]  # doctest: +SKIP
            ['ig']
        """
        require_int("top_k", top_k, minimum=1, optional=True)
        mode = self.tta if tta is None else check_mode(tta)
        stats = self._wants_stats
        return run_pipeline(images, prepare=lambda image: self._prepare(image, stats),
                            infer=lambda batch: self._infer(batch, top_k, mode), batch_size=batch_size,
                            workers=workers, errors=errors, describe=_describe_input)

    def predict_batch(self, images: Iterable[ImageSource], *, batch_size: int = 32, top_k: int | None = None,
                      errors: str = "raise", workers: int | None = None, tta: str | None = None
                      ) -> list[Prediction | None]:
        """Classify several images, ``batch_size`` at a time, decoding in parallel (see :meth:`predict_iter`).

        With ``errors="skip"`` an unusable image gives ``None`` in its place.

        Raises:
            InvalidImageError: naming the first unusable input and its position (``errors="raise"``).
        """
        return [item.value for item in self.predict_iter(images, batch_size=batch_size, top_k=top_k, errors=errors,
                                                         workers=workers, tta=tta)]

    def predict_proba(self, images: ImageSource | Sequence[ImageSource], *, batch_size: int = 32,
                      workers: int | None = None, tta: str | None = None) -> np.ndarray:
        """Class probabilities: shape ``C`` for one image, ``N x C`` for a list (or an ``N x H x W x C`` array);
        ``tta`` as in :meth:`predict`."""
        mode = self.tta if tta is None else check_mode(tta)
        if isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4):
            rows: list[np.ndarray] = [item.value for item in run_pipeline(  # type: ignore[misc]
                list(images), prepare=lambda image: self._prepare(image, False)[0],
                infer=lambda batch: list(self._probabilities(np.stack(batch), mode)),
                batch_size=batch_size, workers=workers, describe=_describe_input)]
            return np.stack(rows) if rows else np.zeros((0, len(self._labels)))
        return self._probabilities(self._prepare(images, False)[0][None], mode)[0]  # type: ignore[arg-type]

    def explain(self, image: ImageSource, target: str | int | None = None, *, tta: str | None = None) -> Explanation:
        """Where the model looked: a heat map for ``target`` (default: the predicted class) over the raw image.

        Torch-free: one inference of a model with a class-activation-map output (``cellsdk-convert`` adds it
        for pooling -> linear heads), so it costs about one :meth:`predict`. See :mod:`cellsdk.explain`.

        Args:
            image: as for :meth:`predict`.
            target: a label or class index to explain instead of the predicted class.
            tta: ``none`` or ``dihedral`` (the maps of the 8 views, turned back and averaged).

        Returns:
            An :class:`~cellsdk.explain.Explanation`: ``heatmap`` (float32, the raw image's height x width,
            in [0, 1]), ``prediction``, ``overlay()`` / ``save(path)`` for a PNG.

        Raises:
            ExplanationUnavailableError: the model has no class-activation-map output (what to do instead).
            ConfigError: an unknown target.
        """
        from cellsdk.explain import explain_images

        return explain_images(self, [image], target, tta=tta)[0]

    def _probabilities(self, batch: np.ndarray, mode: str) -> np.ndarray:
        """Class probabilities of a preprocessed batch, averaged over the views of ``mode``."""
        return merge(self._proba(self.run_outputs(expand(batch, mode))["logits"]), mode)

    @property
    def _wants_stats(self) -> bool:
        return self.guard is not None and self.guard.input_checks is not None

    def _prepare(self, image: ImageSource, stats: bool) -> tuple[np.ndarray, dict[str, float] | None]:
        """The model input of one image, and its input-check statistics when the guard has checks."""
        pixels = np.asarray(prepare_image(load_image(image), self._spec))  # one copy out of Pillow, used twice
        return to_input_array(pixels, self._spec), measure(pixels) if stats else None

    def _infer(self, prepared: list[tuple[np.ndarray, dict[str, float] | None]], top_k: int | None,
               tta: str | None = None) -> list[Prediction]:
        """Predictions for prepared images: one runtime call (split to the model's batch limit; every view of
        every image under TTA), then the guard (on each image as it is, with the averaged probabilities)."""
        return self._infer_outputs(prepared, top_k, tta)[0]

    def _infer_outputs(self, prepared: list[tuple[np.ndarray, dict[str, float] | None]], top_k: int | None,
                       tta: str | None = None) -> tuple[list[Prediction], dict[str, np.ndarray]]:
        """:meth:`_infer`, also returning the model's outputs (every view under TTA)."""
        mode = self.tta if tta is None else check_mode(tta)
        outputs = self.run_outputs(expand(np.stack([array for array, _ in prepared]), mode))
        logits = outputs["logits"].astype(np.float64, copy=False)
        probabilities = merge(self._proba(logits), mode)
        verdicts: list[Assessment] | None = None
        if self.guard is not None:
            features = outputs.get("features")
            verdicts = self.guard.assess(first_view(logits, mode), None if features is None else
                                         first_view(features, mode), [m for _, m in prepared], probabilities)
        return [self._prediction(row, top_k, verdicts[i] if verdicts else None)
                for i, row in enumerate(probabilities)], outputs

    def run_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model, by name (``logits``, and ``features`` for models with a guard).

        Args:
            batch: float32 ``N x 3 x H x W``, already preprocessed; split to the model's batch limit.

        Raises:
            MetadataError: the model's outputs do not match its metadata.
        """
        chunk = self._chunk
        if chunk is None or len(batch) <= chunk:
            parts = [self.backend.run_all(batch)]
        else:
            parts = [self.backend.run_all(batch[i:i + chunk]) for i in range(0, len(batch), chunk)]
        if any(len(p) < len(self._outputs) for p in parts):
            raise MetadataError(f"{self.path}: the model has {len(parts[0])} outputs but its metadata lists "
                                f"{len(self._outputs)} ({', '.join(self._outputs)}); re-convert it")
        outputs = {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self._outputs)}
        logits = outputs["logits"]
        if logits.ndim != 2 or logits.shape != (len(batch), len(self._labels)):
            raise MetadataError(
                f"{self.path}: model returned shape {tuple(logits.shape)} for {len(batch)} images, "
                f"expected ({len(batch)}, {len(self._labels)}) for the {len(self._labels)} labels"
            )
        return outputs

    def raw_outputs(self, batch: np.ndarray) -> np.ndarray:
        """The model's own outputs (logits, unless the metadata says probabilities) for preprocessed arrays.

        Args:
            batch: float32 ``N x 3 x H x W``, already preprocessed (e.g. by
                :func:`cellsdk.preprocessing.preprocess`); split to the model's batch limit.

        Raises:
            MetadataError: the model's output does not have one column per label.
        """
        return self.run_outputs(batch)["logits"]

    def _proba(self, logits: np.ndarray) -> np.ndarray:
        logits = logits.astype(np.float64, copy=False)
        return softmax(logits) if self._apply_softmax else logits

    def _prediction(self, probabilities: np.ndarray, top_k: int | None, verdict: Assessment | None) -> Prediction:
        verdict = verdict or Assessment()
        labels = self._labels
        best = int(np.argmax(probabilities))
        common: dict[str, Any] = {
                  "confidence": float(probabilities[best]), "status": verdict.status, "ood_score": verdict.ood_score,
                  "reasons": verdict.reasons,
                  "probabilities": {label: float(p) for label, p in zip(labels, probabilities, strict=True)}}
        if self.ood == "reject" and verdict.status != "ok":
            return Prediction(label=None, index=None, top_k=(), **common)
        k = min(top_k or self.default_top_k, len(labels))
        order = np.argsort(-probabilities, kind="stable")[:k]
        return Prediction(label=labels[best], index=best,
                          top_k=tuple((labels[int(i)], float(probabilities[i])) for i in order), **common)
