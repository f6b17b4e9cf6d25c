"""Which LiteRT int8 recipe cellsdk uses, by measurement: ai-edge-quantizer's full-integer ``static_wi8_ai8``
against litert-torch's own PT2E quantizer (per-channel symmetric), on the same calibration images.

``python -m cellsdk.benchmarks.studies.litert_int8_recipes CHECKPOINT --data DATA [--data-cropped] [--out DIR]``

Both start from the module every format exports (logits, features, class activation maps) at batch 1. Each file
runs on the whole ``--split`` (default test) in the LiteRT interpreter; reported: accuracy, the worst class's
recall, top-1 agreement with and logit cosine to the fp32 ``.tflite`` file, its size, and the median batch-1
latency (model only, every usable core, quantizing the input and dequantizing the logits included).

Examples:
    >>> main(["models/bloodmnist_effnet_lite0_128.safetensors", "--data", "data/bloodmnist_128"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["compare", "format_recipes", "main"]


def _run(path: Path, arrays: np.ndarray) -> tuple[np.ndarray, float]:
    """The logits of every image (batch 1, through the cellsdk backend's quantize / dequantize) and the median ms."""
    from ai_edge_litert.interpreter import Interpreter

    from cellsdk.backends.litert import dequantize, quantize, tensor_quantization, usable_cores

    interpreter = Interpreter(model_path=str(path), num_threads=usable_cores())
    signatures = interpreter.get_signature_list()
    key = next(iter(signatures))
    runner = interpreter.get_signature_runner(key)
    name = next(iter(signatures[key]["inputs"]))
    in_q = tensor_quantization(runner.get_input_details()[name])
    out_q = tensor_quantization(runner.get_output_details()["output_0"])
    logits, times = [], []
    for image in arrays:
        started = time.perf_counter()
        out = dequantize(runner(**{name: quantize(image[None], in_q)})["output_0"], out_q)
        times.append(time.perf_counter() - started)
        logits.append(out[0])
    return np.stack(logits), float(np.median(times) * 1000)


def _pt2e(job: Any, calibration: Any, out: Path) -> Path:
    """litert-torch's PT2E route: export, per-channel symmetric observers, calibrate, convert, lower."""
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig

    from cellsdk.converters.base import plain_tensor_copy
    from cellsdk.converters.int8 import pt2e_calibrated

    module = plain_tensor_copy(job.exported).eval()
    example = (job.example(1),)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    converted = pt2e_calibrated(torch.export.export(module, example).module(), quantizer, calibration,
                                fold_quantize=False)
    with contextlib.redirect_stdout(io.StringIO()):
        litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(out))
    return out


def compare(checkpoint: str, data: str, *, split: str = "test", data_cropped: bool = False, samples: int = 256,
            seed: int = 0) -> dict[str, Any]:
    """Both recipes on ``data``'s ``split``, against the fp32 file.

    Examples:
        >>> report = compare("models/bloodmnist_effnet_lite0_128.safetensors", "data/bloodmnist_128")  # doctest: +SKIP
        >>> [row["recipe"] for row in report["rows"]]  # doctest: +SKIP
        ['fp32 (reference)', 'ai-edge-quantizer static_wi8_ai8', 'litert-torch pt2e (per-channel)']
    """
    from cellsdk.converters.base import ExportJob
    from cellsdk.converters.calibration import calibration_set, evaluation_set
    from cellsdk.converters.litert import LiteRtConverter
    from cellsdk.metrics import classification_report, softmax
    from cellsdk.platform.cpu import host_cpu
    from cellsdk.training.checkpoint import load_checkpoint

    model, metadata = load_checkpoint(checkpoint)
    metadata = metadata.replace(outputs=("logits", "features", "cams"))
    calibration = calibration_set(data, metadata, samples=samples, seed=seed, data_cropped=data_cropped)
    images = evaluation_set(data, metadata, split=split, data_cropped=data_cropped)
    converter = LiteRtConverter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cellsdk-litert-recipes-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        job = ExportJob(model=model, metadata=metadata, workdir=Path(tmp), calibration=calibration)
        started = time.perf_counter()
        fp32 = converter.fp32_file(job)
        files = {"fp32 (reference)": (fp32, time.perf_counter() - started)}
        started = time.perf_counter()
        files["ai-edge-quantizer static_wi8_ai8"] = (converter.quantized_file(job, fp32, "int8", calibration),
                                                     time.perf_counter() - started)
        started = time.perf_counter()
        files["litert-torch pt2e (per-channel)"] = (_pt2e(job, calibration, Path(tmp) / "pt2e.tflite"),
                                                    time.perf_counter() - started)
        reference = None
        for name, (path, seconds) in files.items():
            logits, ms = _run(path, images.arrays)
            reference = logits if reference is None else reference
            report = classification_report(images.targets, softmax(logits.astype(np.float64)), metadata.labels)
            worst = min(report["per_class"], key=lambda k: report["per_class"][k]["recall"])
            cosine = (logits * reference).sum(1) / np.linalg.norm(logits, axis=1) / np.linalg.norm(reference, axis=1)
            rows.append({"recipe": name, "accuracy": report["accuracy"], "worst_class": worst,
                         "worst_recall": report["per_class"][worst]["recall"],
                         "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
                         "logit_cosine": float(cosine.mean()), "mb": round(path.stat().st_size / 1e6, 2),
                         "batch1_ms": round(ms, 3), "convert_seconds": round(seconds, 1)})
    cpu = host_cpu()
    return {"machine": {"model": cpu.model, "cpu_class": cpu.cpu_class}, "checkpoint": checkpoint, "data": data,
            "split": split, "images": len(images), "calibration_images": len(calibration), "rows": rows}


def format_recipes(report: dict[str, Any]) -> str:
    """The comparison as Markdown.

    Examples:
        >>> print(format_recipes({"machine": {"model": "EPYC", "cpu_class": "x86-64-avx2"}, "split": "test",
        ...                       "images": 2, "calibration_images": 1, "rows": []}).splitlines()[0])
        EPYC, class x86-64-avx2; test split, 2 images; 1 calibration images
    """
    lines = [f"{report['machine']['model']}, class {report['machine']['cpu_class']}; {report['split']} split, "
             f"{report['images']} images; {report['calibration_images']} calibration images", "",
             "| recipe | accuracy % | worst class (recall %) | agreement with fp32 % | logit cosine | MB | "
             "batch-1 ms | convert s |", "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['recipe']} | {100 * row['accuracy']:.2f} | {row['worst_class']} "
                     f"({100 * row['worst_recall']:.2f}) | {100 * row['agreement']:.2f} | {row['logit_cosine']:.4f} | "
                     f"{row['mb']:.2f} | {row['batch1_ms']:.2f} | {row['convert_seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Compare the recipes; print the table (and write it with ``--out``).

    Examples:
        >>> main(["models/bloodmnist_effnet_lite0_128.safetensors", "--data", "data/bloodmnist_128"])  # doctest: +SKIP
    """
    from cellsdk._io import write_json, write_text

    parser = argparse.ArgumentParser(prog="python -m cellsdk.benchmarks.studies.litert_int8_recipes",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-cropped", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = compare(args.checkpoint, args.data, split=args.split, data_cropped=args.data_cropped)
    print(format_recipes(report))
    if args.out:
        write_json(args.out / "litert_int8_recipes.json", report)
        write_text(args.out / "litert_int8_recipes.md", format_recipes(report) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="litert_int8_recipes")
