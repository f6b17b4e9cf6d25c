"""The SDK's overhead: ``Classifier.predict`` against a hand-written minimal call of the same runtime.

The hand-written call is what a user would write without cellsdk: Pillow
crop + resize, numpy normalise, and the runtime's own run call
(``session.run`` / ``infer_request.infer`` / ``module(tensor)``), on the same
in-memory PIL image. Both run on the same machine in one loop, alternating,
so noise hits both alike; medians and their ratio are reported.

Usage:
    ``python -m cellsdk.benchmarks.overhead MODEL [MODEL ...] --image IMAGE [--iterations 300] [--json FILE]``

Examples:
    >>> rows = measure_overhead(["model.onnx"], "cell.jpg", iterations=50)  # doctest: +SKIP
    >>> rows[0]["ratio"]  # doctest: +SKIP
    1.02
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cellsdk.backends import backend_for_path
from cellsdk.classifier import Classifier
from cellsdk.metadata import Preprocessing
from cellsdk.platform.machine import describe_machine, machine_info

__all__ = ["hand_written_call", "hand_written_parts", "measure_overhead"]

_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def _hand_preprocess(spec: Preprocessing) -> Callable[[Image.Image], np.ndarray]:
    """Minimal preprocessing a user would write: crop, resize, normalise, NCHW."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    size = (spec.input_size, spec.input_size)

    def run(image: Image.Image) -> np.ndarray:
        if spec.crop_mode == "pixels":
            side = min(int(spec.crop_value), *image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        pixels = np.asarray(image.resize(size, _FILTERS[spec.resize_filter]), dtype=np.float32) / 255.0
        return ((pixels - mean) / std).transpose(2, 0, 1)[None].copy()

    return run


def hand_written_parts(path: str | os.PathLike, spec: Preprocessing, backend: str,
                       options: dict[str, Any] | None = None
                       ) -> tuple[Callable[[Image.Image], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """The two halves of a minimal direct runtime call: ``prepare(image) -> 1xCxHxW`` and ``infer(batch)``.

    Examples:
        >>> prepare, infer = hand_written_parts("model.int8.onnx", "onnxruntime")  # doctest: +SKIP
    """
    options = options or {}
    prepare = _hand_preprocess(spec)
    if backend == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return prepare, lambda batch: session.run(None, {name: batch})[0]
    if backend == "openvino":
        import openvino as ov

        config = {"PERFORMANCE_HINT": "LATENCY"}
        if options.get("precision"):
            config["INFERENCE_PRECISION_HINT"] = options["precision"]
        request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
        return prepare, lambda batch: request.infer({0: batch})[0]
    if backend == "torchscript":
        import torch

        with warnings.catch_warnings():  # torch >= 2.11 marks torch.jit deprecated; LibTorch still runs TorchScript
            warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
            module = torch.jit.load(str(path), map_location="cpu").eval()

        def infer(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                output = module(torch.from_numpy(batch))
            return (output[0] if isinstance(output, (tuple, list)) else output).numpy()  # logits first

        return prepare, infer
    if backend == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=options.get("threads") or os.cpu_count())
        interpreter.allocate_tensors()
        key = next(iter(interpreter.get_signature_list()))
        runner = interpreter.get_signature_runner(key)
        argument = next(iter(interpreter.get_signature_list()[key]["inputs"]))
        # a full-integer (int8) file takes and returns int8: its scales are in the tensors' details
        source = runner.get_input_details()[argument]
        target = runner.get_output_details()["output_0"]

        def one(image: np.ndarray) -> np.ndarray:
            if source["dtype"] != np.float32:
                scale, zero = source["quantization"]
                image = np.clip(np.rint(image / scale) + zero, -128, 127).astype(source["dtype"])
            out = runner(**{argument: image})["output_0"]
            if target["dtype"] != np.float32:
                scale, zero = target["quantization"]
                out = (out.astype(np.float32) - zero) * scale
            return out

        def infer_litert(batch: np.ndarray) -> np.ndarray:  # a batch of one per call, as the program was exported
            return np.concatenate([one(batch[i:i + 1]) for i in range(len(batch))])

        return prepare, infer_litert
    if backend == "executorch":
        import torch
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(str(path)).load_method("forward")

        def infer_executorch(batch: np.ndarray) -> np.ndarray:
            return np.concatenate([method.execute([torch.from_numpy(batch[i:i + 1])])[0].numpy()
                                   for i in range(len(batch))])

        return prepare, infer_executorch
    raise ValueError(f"no hand-written call for backend {backend!r}")


def hand_written_call(path: str | os.PathLike, spec: Preprocessing, backend: str,
                      options: dict[str, Any] | None = None) -> Callable[[Image.Image], np.ndarray]:
    """A minimal direct call of the runtime behind ``backend`` for the model at ``path``, on one PIL image.

    Examples:
        >>> call = hand_written_call("model.int8.onnx", "onnxruntime")  # doctest: +SKIP
    """
    prepare, infer = hand_written_parts(path, spec, backend, options)
    return lambda image: infer(prepare(image))


def measure_overhead(models: list[str | os.PathLike], image: str | os.PathLike, *, iterations: int = 300,
                     warmup: int = 20, options: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Median latency of ``Classifier.predict`` and of the hand-written call, per model file, and their ratio.

    ``options`` maps a backend name to its load options (e.g. ``{"openvino": {"precision": "f32"}}``);
    the hand-written call gets the same ones.

    Examples:
        >>> rows = measure_overhead(["model.int8.onnx"], "cell.jpg", iterations=50)  # doctest: +SKIP
    """
    options = options or {}
    picture = Image.open(image)
    picture.load()
    rows = []
    for model in models:
        classifier = Classifier.load(model, device="cpu", **options.get(backend_for_path(model).name, {}))
        hand = hand_written_call(classifier.path, classifier.metadata.preprocessing, classifier.backend_name,
                                 options.get(classifier.backend_name))
        sdk_label = classifier.predict(picture).index
        hand_label = int(np.argmax(hand(picture)))
        for _ in range(warmup):
            classifier.predict(picture)
            hand(picture)
        sdk_times, hand_times = [], []
        for _ in range(iterations):
            start = time.perf_counter()
            classifier.predict(picture)
            middle = time.perf_counter()
            hand(picture)
            sdk_times.append(middle - start)
            hand_times.append(time.perf_counter() - middle)
        sdk_ms, hand_ms = statistics.median(sdk_times) * 1e3, statistics.median(hand_times) * 1e3
        rows.append({
            "model": str(model), "backend": classifier.backend.describe(), "iterations": iterations,
            "classifier_ms": sdk_ms, "hand_written_ms": hand_ms, "ratio": sdk_ms / hand_ms,
            "same_top1": sdk_label == hand_label,
        })
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--image", required=True)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--openvino-precision", default=None, help="e.g. f32 (default: the device's choice)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    options = {"openvino": {"precision": args.openvino_precision}} if args.openvino_precision else {}
    rows = measure_overhead(args.models, args.image, iterations=args.iterations, warmup=args.warmup, options=options)
    print(f"machine: {describe_machine()}")
    print(f"{'backend':<42}{'Classifier ms':>15}{'hand-written ms':>17}{'ratio':>8}  same top-1")
    for row in rows:
        print(f"{row['backend']:<42}{row['classifier_ms']:>15.3f}{row['hand_written_ms']:>17.3f}"
              f"{row['ratio']:>8.3f}  {row['same_top1']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="overhead")
