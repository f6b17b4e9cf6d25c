"""The hand-written reference for the throughput benchmark: what a user writes without cellsdk.

A thread pool decodes, crops, resizes and normalises the images (Pillow and numpy release the GIL) while the
main thread runs ONNX Runtime on batches; nothing else (no input checks, no OOD guard, no result objects). It
imports no cellsdk module: the preprocessing is read from the model's own ``cellsdk`` metadata JSON with plain
``json``, as a user with the model file would. ``cellsdk-bench --throughput`` runs it in its own process beside
the cellsdk engines and reports cellsdk's throughput as a ratio of this one's.

    python benchmarks/reference_pipeline.py MODEL.onnx --list paths.txt [--workers N] [--threads N] [--batch N]
        [--labels-out labels.txt]

Prints one JSON line: images, seconds, images_per_s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
from PIL import Image


def load_session(model: str, threads: int | None) -> tuple[ort.InferenceSession, dict]:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["cellsdk"])
    return session, meta


def make_prepare(pre: dict):
    size, mode, value = pre["input_size"], pre.get("crop_mode", "none"), float(pre.get("crop_value", 1.0))
    mean = np.asarray(pre["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(pre["std"], np.float32).reshape(3, 1, 1)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "nearest": Image.Resampling.NEAREST}[pre["resize_filter"]]

    def prepare(path: str) -> np.ndarray:
        with Image.open(path) as image:
            image = image.convert("RGB")
        width, height = image.size
        if mode == "pixels":
            side = min(int(value), width, height)
        elif mode == "fraction":
            side = round(min(width, height) * value)
        else:
            side = None
        if side:
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        image = image.resize((size, size), resample)
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (array - mean) / std

    return prepare


def run(model: str, paths: list[str], *, workers: int, threads: int | None, batch: int) -> tuple[list[int], float]:
    session, meta = load_session(model, threads)
    prepare = make_prepare(meta["preprocessing"])
    name = session.get_inputs()[0].name
    labels: list[int] = []
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = pool.map(prepare, paths)  # decoding runs ahead while the model works on the current batch
        pending: list[np.ndarray] = []
        for array in arrays:
            pending.append(array)
            if len(pending) == batch:
                labels.extend(session.run(None, {name: np.stack(pending)})[0].argmax(1).tolist())
                pending = []
        if pending:
            labels.extend(session.run(None, {name: np.stack(pending)})[0].argmax(1).tolist())
    return labels, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(prog="reference_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--list", required=True, help="a file with one image path per line")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--labels-out", default=None, help="write the predicted label index of each image here")
    args = parser.parse_args()
    with open(args.list, encoding="utf-8") as handle:
        paths = [line.strip() for line in handle if line.strip()]
    labels, seconds = run(args.model, paths, workers=args.workers, threads=args.threads, batch=args.batch)
    if args.labels_out:
        with open(args.labels_out, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{label}\n" for label in labels))
    print(json.dumps({"images": len(labels), "seconds": seconds, "images_per_s": len(labels) / seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
