"""Cold start: ``cellsdk predict IMAGE`` against a bare ONNX Runtime script, whole processes, paired.

    python -m cellsdk.benchmarks.studies.cold_start [IMAGE] [--model MODEL] [--runs 7] [--importtime] [--out DIR]

Each round starts both as fresh processes, in alternating order: the bare script (numpy + Pillow + ONNX Runtime:
decode, centre crop, resize, normalise, one session, one run, softmax; what the model's metadata says, written out
by hand) and ``cellsdk predict IMAGE`` (the console script: the same model with its guard and self-check). The
figure is the ratio of the medians of the wall times (and the median of the per-round ratios). ``--importtime``
adds where cellsdk's process spends its import time (``python -X importtime``, self time per module, the
largest first). Results go to ``OUT/cold_start.json`` and a Markdown table; the CPU class is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cellsdk.platform.cpu import host_cpu

__all__ = ["BARE_SCRIPT", "import_table", "timed"]

#: the bare ONNX Runtime script: what a user would write without cellsdk (the shipped model's preprocessing)
BARE_SCRIPT = """\
import sys
import numpy as np, onnxruntime as ort
from PIL import Image
image = Image.open(sys.argv[2]).convert("RGB")
w, h = image.size
image = image.crop(((w - 200) // 2, (h - 200) // 2, (w - 200) // 2 + 200, (h - 200) // 2 + 200))
x = (np.asarray(image.resize((128, 128), Image.BILINEAR), np.float32) / 255 - 0.5) / 0.5
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
logits = session.run(["logits"], {session.get_inputs()[0].name: x.transpose(2, 0, 1)[None]})[0][0]
p = np.exp(logits - logits.max()); print(int(p.argmax()), float(p.max() / p.sum()))
"""


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one whole process, in seconds (its output discarded; a failure raises).

    Examples:
        >>> timed([sys.executable, "-c", "pass"]) > 0
        True
    """
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def import_table(stderr: str, top: int = 15) -> list[tuple[str, float, float]]:
    """``(module, self ms, cumulative ms)`` of ``python -X importtime`` output, the largest self times first.

    Examples:
        >>> import_table("import time: self [us] | cumulative | imported package\\nimport time:      1500 |       2500 | numpy")
        [('numpy', 1.5, 2.5)]
    """
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        own, total, name = line[len("import time:"):].split("|")
        rows.append((name.strip(), int(own) / 1000, int(total) / 1000))
    return sorted(rows, key=lambda row: -row[1])[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", type=Path, default=Path("samples/pbc_raw/ig/MMY_163947.jpg"))
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/cold_start"))
    args = parser.parse_args()
    from cellsdk.artefacts.resolve import default_model_path

    model = args.model or default_model_path()
    console = Path(sys.executable).with_name("cellsdk")
    cellsdk_command = [str(console), "predict", str(args.image)] + (["--model", str(args.model)] if args.model else [])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # .pyc files as a user has them
    with tempfile.TemporaryDirectory() as scratch:
        bare = Path(scratch) / "bare.py"
        bare.write_text(BARE_SCRIPT)
        bare_command = [sys.executable, str(bare), str(model), str(args.image)]
        for command in (bare_command, cellsdk_command, bare_command, cellsdk_command):  # the file cache, the .pyc
            timed(command, env)  # files and cellsdk's caches (self-check verdict, optimised graph) as a user has them
        pairs = []
        for round_ in range(args.runs):
            order = [(bare_command, "bare"), (cellsdk_command, "cellsdk")][:: 1 if round_ % 2 == 0 else -1]
            seconds = {name: timed(command, env) for command, name in order}
            pairs.append(seconds)
    bare_median = statistics.median(p["bare"] for p in pairs)
    cellsdk_median = statistics.median(p["cellsdk"] for p in pairs)
    report: dict[str, Any] = {
        "cpu": host_cpu().to_dict(), "model": str(model), "image": str(args.image), "runs": args.runs,
        "bare_ms": round(1000 * bare_median, 1), "cellsdk_ms": round(1000 * cellsdk_median, 1),
        "ratio_of_medians": round(cellsdk_median / bare_median, 3),
        "median_of_ratios": round(statistics.median(p["cellsdk"] / p["bare"] for p in pairs), 3),
        "pairs_ms": [{k: round(1000 * v, 1) for k, v in p.items()} for p in pairs]}
    lines = [f"cold start on {report['cpu']['model']} ({report['cpu']['cpu_class']}), {args.runs} paired runs: "
             f"bare ONNX Runtime {report['bare_ms']} ms, cellsdk predict {report['cellsdk_ms']} ms, "
             f"ratio {report['ratio_of_medians']} (median of ratios {report['median_of_ratios']})"]
    if args.importtime:
        result = subprocess.run([sys.executable, "-X", "importtime", str(console), *cellsdk_command[1:]],
                                capture_output=True, text=True, check=True)
        table = import_table(result.stderr)
        report["imports"] = [{"module": m, "self_ms": s, "cumulative_ms": c} for m, s, c in table]
        lines += ["", "| module | self ms | cumulative ms |", "| --- | ---: | ---: |"]
        lines += [f"| {m} | {s:.1f} | {c:.1f} |" for m, s, c in table]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_start.json").write_text(json.dumps(report, indent=1))
    (args.out / "cold_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    from cellsdk.benchmarks._script import run_script

    run_script(main, prog="cold_start")
