"""What the self-check costs: ``Classifier.load`` without it, on first use (empty cache: the vectors run), and cached.

    python -m cellsdk.benchmarks.studies.selfcheck [MODEL] [--rounds 15] [--json OUT.json]

MODEL (default: the shipped model) is loaded as if on a new machine: its gate records for this machine are
hidden, so the self-check really runs. The three kinds of load alternate round by round in one process (each
first-use load with a fresh, empty cache), so a busy machine slows them alike; the report is the median of each,
their ratios to the plain load, the self-check's own time, and the artefact's size with and without its vectors,
with the CPU class.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cellsdk import Classifier
from cellsdk._io import artefact_files
from cellsdk.platform.cpu import host_cpu
from cellsdk.platform.machine import describe_machine


def measure(model: str | None, rounds: int = 15) -> dict[str, Any]:
    """Median load times (ms) of the three kinds of load, the self-check's own time, and the vectors' size."""
    import cellsdk.artefacts.selfcheck as selfcheck
    from cellsdk.artefacts.info import read_metadata
    from cellsdk.testvectors import TestVectors

    real_record = selfcheck.matching_record
    selfcheck.matching_record = lambda classifier, key: None  # as on a machine the artefact has no record for
    times: dict[str, list[float]] = {"plain": [], "first": [], "cached": []}
    checks: list[float] = []
    saved = os.environ.get("CELLSDK_CACHE")
    try:
        with tempfile.TemporaryDirectory(prefix="cellsdk-bench-selfcheck-") as tmp:
            Classifier.load(model, self_check=False)  # warm the runtime's own start-up
            for i in range(rounds):
                fresh = Path(tmp) / f"cache{i}"
                for kind in ("plain", "first", "cached") if i % 2 else ("cached", "first", "plain"):
                    os.environ["CELLSDK_CACHE"] = str(fresh if kind == "first" else Path(tmp) / "warm")
                    if kind == "cached" and i == 0:
                        Classifier.load(model)  # fill the warm cache once
                    start = time.perf_counter()
                    clf = Classifier.load(model, self_check=kind != "plain")
                    times[kind].append(time.perf_counter() - start)
                    if kind == "first":
                        if clf.self_check.cached:
                            raise RuntimeError("the first-use load read a cached verdict instead of running")
                        checks.append(clf.self_check.seconds)
                        status, images = clf.self_check.status, clf.self_check.images
    finally:
        selfcheck.matching_record = real_record
        if saved is None:
            os.environ.pop("CELLSDK_CACHE", None)
        else:
            os.environ["CELLSDK_CACHE"] = saved
    path = clf.path
    meta = read_metadata(path)
    vectors = TestVectors.from_dict(meta.test_vectors) if meta.test_vectors else None
    size = sum(f.stat().st_size for f in artefact_files(path))
    medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"model": str(path.name), "rounds": rounds, "status": status, "images": images,
            "plain_load_ms": medians["plain"], "first_use_load_ms": medians["first"],
            "cached_load_ms": medians["cached"], "self_check_ms": statistics.median(checks) * 1e3,
            "first_use_ratio": medians["first"] / medians["plain"], "cached_ratio": medians["cached"] / medians["plain"],
            "artefact_bytes": size, "vectors_bytes": vectors.nbytes() if vectors else 0,
            "vectors_share": (vectors.nbytes() / (size - vectors.nbytes())) if vectors else 0.0,
            "cpu": host_cpu().to_dict(), "machine": describe_machine()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    r = measure(args.model, args.rounds)
    print(f"{r['model']} on {r['machine']} (class {r['cpu']['cpu_class']}), median of {r['rounds']} rounds:\n"
          f"  load without self-check   {r['plain_load_ms']:8.1f} ms\n"
          f"  first use (runs {r['images']} vectors) {r['first_use_load_ms']:8.1f} ms  x{r['first_use_ratio']:.2f} "
          f"(the check itself {r['self_check_ms']:.1f} ms: {r['status']})\n"
          f"  later loads (cached)      {r['cached_load_ms']:8.1f} ms  x{r['cached_ratio']:.2f}\n"
          f"  vectors {r['vectors_bytes'] / 1e3:.0f} KB in a {r['artefact_bytes'] / 1e6:.2f} MB artefact "
          f"(+{r['vectors_share'] * 100:.1f} % of the artefact without them)")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="selfcheck")
