"""What the OOD guard costs: batch-1 ``predict`` with the guard (``ood="flag"``) and without (``ood="off"``).

    python -m cellsdk.benchmarks.studies.guard_overhead MODEL [IMAGES...] [--rounds 300]

Both classifiers share the process and run interleaved, round by round, on the same images, so a busy
machine slows both alike; the report is the median of each and their ratio, with the CPU class.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from cellsdk import Classifier
from cellsdk.platform.cpu import host_cpu


def measure(model: str, images: list[Path], rounds: int = 300) -> dict[str, float]:
    """Median batch-1 ``predict`` latency (ms) with and without the guard, and their ratio."""
    guarded, plain = Classifier.load(model, ood="flag"), Classifier.load(model, ood="off")
    if guarded.guard is None:
        raise SystemExit(f"{model} carries no OOD guard: nothing to compare")
    times: dict[str, list[float]] = {"guard": [], "no_guard": []}
    for clf in (guarded, plain):  # warm-up
        for image in images[:3]:
            clf.predict(image)
    for i in range(rounds):
        image = images[i % len(images)]
        for name, clf in (("guard", guarded), ("no_guard", plain)) if i % 2 else (("no_guard", plain), ("guard", guarded)):
            start = time.perf_counter()
            clf.predict(image)
            times[name].append(time.perf_counter() - start)
    with_guard, without = (statistics.median(times[k]) * 1e3 for k in ("guard", "no_guard"))
    return {"guard_ms": with_guard, "no_guard_ms": without, "ratio": with_guard / without,
            "score": guarded.guard.score.name, "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    images = args.images or sorted(Path("samples/pbc_raw").rglob("*.jpg"))
    result = measure(args.model, images, args.rounds)
    cpu = host_cpu()
    print(f"{args.model}: predict() batch 1, median of {result['rounds']} interleaved calls on {cpu.model} "
          f"({cpu.cpu_class}): with guard ({result['score']}) {result['guard_ms']:.2f} ms, without "
          f"{result['no_guard_ms']:.2f} ms, ratio {result['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="guard_overhead")
