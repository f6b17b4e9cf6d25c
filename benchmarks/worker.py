"""One benchmark measurement, run in its own process so cold start and peak memory are the row's own.

The harness starts ``python -m cellsdk.benchmarks.worker`` with a JSON spec on
standard input and reads one JSON object from the last line of its output.

Measured: cold start (load + first prediction), end-to-end latency (read +
decode + preprocess + infer from image files, as a user's code would) and
model-only latency (preprocessed arrays in, outputs out) per call, the bare
runtime call without cellsdk (end-to-end, same images), accuracy on a
dataset, and the process's peak memory.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any, Callable

__all__ = ["run_spec"]


def _timed(call: Callable[[], Any], warmup: int, iterations: int, duration: float | None) -> list[float]:
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + duration if duration else None
    while (len(times) < iterations) if deadline is None else (time.perf_counter() < deadline or len(times) < 3):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _peak_memory_mb() -> float:
    """This process's peak resident memory.

    On Linux, VmHWM of /proc/self/status: ``ru_maxrss`` survives exec, so a worker started
    from a large parent (one that has torch and models loaded) would report the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (model, backend, device, batch) as ``spec`` says; see the harness for the fields."""
    import numpy as np
    from PIL import Image

    from cellsdk.benchmarks.stats import latency_summary
    from cellsdk.metrics import classification_report, softmax
    from cellsdk.preprocessing import preprocess

    batch, paths = spec["batch"], spec["images"]
    chunk = [paths[i % len(paths)] for i in range(batch)]
    timing = (spec["warmup"], spec["iterations"], spec.get("duration"))
    out: dict[str, Any] = {}
    started = time.perf_counter()
    if spec["kind"] == "eager":
        import torch

        from cellsdk.training.checkpoint import load_checkpoint

        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        device = torch.device(spec["device"])
        model, metadata = load_checkpoint(spec["model"])
        model = model.to(device).eval()
        prep = metadata.preprocessing
        if spec.get("input_size"):  # the same size as the converted artefacts it is compared with
            prep = dataclasses.replace(prep, input_size=int(spec["input_size"]))
        prep = prep.without_crop() if spec.get("data_cropped") else prep

        def forward(array: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(array).to(device)).float().cpu().numpy()

        def e2e() -> np.ndarray:
            return forward(np.stack([preprocess(p, prep) for p in chunk]))

        e2e()
        out["cold_start_s"] = time.perf_counter() - started
        labels = metadata.labels
    else:
        from cellsdk.classifier import Classifier

        options = dict(spec.get("options") or {})
        if spec.get("threads"):
            options["threads"] = spec["threads"]
        classifier = Classifier.load(spec["model"], backend=spec["backend"], device=spec["device"], **options)
        # end-to-end runs the model's own preprocessing, as users do; model-only and accuracy use the data's
        prep = (classifier.metadata.preprocessing.without_crop() if spec.get("data_cropped")
                else classifier.metadata.preprocessing)

        def forward(array: np.ndarray) -> np.ndarray:
            return classifier.raw_outputs(array)

        def e2e() -> Any:
            return classifier.predict(chunk[0]) if batch == 1 else classifier.predict_batch(chunk, batch_size=batch)

        e2e()
        out["cold_start_s"] = time.perf_counter() - started
        out["runtime"] = classifier.backend.describe()
        out["precision"] = classifier.metadata.precision
        labels = classifier.labels
    out["input_size"] = prep.input_size
    arrays = np.stack([preprocess(p, prep) for p in chunk])
    out["e2e"] = latency_summary(_timed(e2e, *timing), batch=batch)
    out["model_only"] = latency_summary(_timed(lambda: forward(arrays), *timing), batch=batch)
    if spec.get("bare") and spec["kind"] != "eager":
        from cellsdk.benchmarks.overhead import hand_written_parts

        prepare, infer = hand_written_parts(spec["model"], prep, spec["backend"], spec.get("options"))
        step = classifier.backend.max_batch or batch  # a static-batch model takes its own batch size per call

        def bare() -> Any:
            arrays = np.concatenate([prepare(Image.open(p).convert("RGB")) for p in chunk])
            return [infer(arrays[i:i + step]) for i in range(0, len(arrays), step)]

        out["bare_e2e"] = latency_summary(_timed(bare, *timing), batch=batch)
    if spec.get("eval_images"):
        unknown = sorted(set(spec["eval_names"]) - set(labels))
        if unknown:
            raise ValueError(f"data classes {', '.join(unknown)} are not among the model's labels")
        targets = np.asarray([list(labels).index(name) for name in spec["eval_names"]])  # class names -> model order
        scores = np.concatenate([forward(np.stack([preprocess(p, prep) for p in spec["eval_images"][i:i + 32]]))
                                 for i in range(0, len(spec["eval_images"]), 32)])
        report = classification_report(targets, softmax(scores.astype(np.float64)), labels)
        out["accuracy"], out["macro_f1"] = report["accuracy"], report["macro_f1"]
    out["peak_memory_mb"] = _peak_memory_mb()
    return out


def main() -> None:
    spec = json.loads(sys.stdin.read())
    try:
        result = {"ok": True, **run_spec(spec)}
    except Exception as err:  # noqa: BLE001 - reported as the row's error, the harness goes on
        result = {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
