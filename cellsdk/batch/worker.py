"""The worker of CPU-class checks under emulation: run an artefact on preprocessed arrays, save what it gave.

``python -m cellsdk.batch.worker MODEL ARRAYS.npy OUT.npz [--options JSON]`` loads MODEL through
:class:`cellsdk.Classifier` (torch-free: it also runs in the aarch64 environment under ``qemu-aarch64``, which has
only cellsdk's runtime), runs the arrays in batches of 16 and writes ``OUT.npz``: ``logits`` and ``info`` (the CPU
class and features this process saw, and the runtime). The parent (:mod:`cellsdk.converters.targets`) judges them.

``python -m cellsdk.batch.worker --self-check MODEL OUT.json [--options JSON]`` runs MODEL's own test vectors instead
(:func:`cellsdk.artefacts.selfcheck.run_self_check`, decoding included) and writes the verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the worker; 0 on success (errors end the process with the runtime's message on stderr).

    Examples:
        >>> main(["--self-check", "model.int8.onnx", "verdict.json"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(prog="python -m cellsdk.batch.worker")
    parser.add_argument("--self-check", action="store_true")
    parser.add_argument("model", type=Path)
    parser.add_argument("paths", type=Path, nargs="+", help="ARRAYS.npy OUT.npz, or OUT.json with --self-check")
    parser.add_argument("--options", default="{}")
    args = parser.parse_args(argv)
    from cellsdk.artefacts.selfcheck import run_self_check, runtime_version
    from cellsdk.classifier import Classifier
    from cellsdk.platform.cpu import host_cpu

    options = {"threads": 1, **json.loads(args.options)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = Classifier.load(args.model, device="cpu", self_check=False, **options)
    if args.self_check:
        out = args.paths[0]
        partial = out.with_suffix(".partial.json")
        partial.write_text(json.dumps(run_self_check(clf).to_dict()))
        os.replace(partial, out)
        return 0
    args.arrays, args.out = args.paths[:2]
    batch = np.load(args.arrays)
    logits = np.concatenate([clf.raw_outputs(batch[i:i + 16]) for i in range(0, len(batch), 16)])
    cpu = host_cpu()
    info = {"cpu_class": cpu.cpu_class, "features": list(cpu.features), "runtime": clf.backend.describe(),
            "runtime_version": runtime_version(clf.backend)}
    partial = args.out.with_suffix(".partial.npz")
    np.savez(partial, logits=logits.astype(np.float64), info=np.array(json.dumps(info)))
    os.replace(partial, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
