"""Batch-1 model-only latency of int8 recipes, interleaved in one process (portable vs full-range, same inputs).

Alternating the calls makes both models share whatever else the machine is doing, so the ratio holds
even on a busy shared machine where sequential rows drift:

    python -m cellsdk.benchmarks.studies.recipe_latency A.int8.onnx B.int8.onnx [--rounds 5 --calls 400]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from cellsdk.classifier import Classifier
from cellsdk.platform.cpu import host_cpu


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [Classifier.load(path, device="cpu") for path in args.models]
    size = models[0].metadata.preprocessing.input_size
    batch = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    for model in models:
        for _ in range(20):
            model.raw_outputs(batch)
    medians: dict[str, list[float]] = {str(p): [] for p in args.models}
    for _ in range(args.rounds):
        times: dict[str, list[float]] = {str(p): [] for p in args.models}
        for _ in range(args.calls):
            for path, model in zip(args.models, models, strict=True):
                start = time.perf_counter()
                model.raw_outputs(batch)
                times[str(path)].append(time.perf_counter() - start)
        for key, values in times.items():
            medians[key].append(statistics.median(values) * 1e3)
    print(f"host: {host_cpu().describe()}; {args.rounds} rounds x {args.calls} interleaved calls, batch 1")
    base = statistics.median(medians[str(args.models[0])])
    for key, values in medians.items():
        m = statistics.median(values)
        print(f"{Path(key).name:<32} median {m:6.3f} ms  (rounds {min(values):.3f}-{max(values):.3f})  "
              f"ratio to first {m / base:.3f}")
    return medians


if __name__ == "__main__":
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="recipe_latency")
