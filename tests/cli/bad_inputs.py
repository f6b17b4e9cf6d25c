"""The bad-input matrix of the hardening issue: each case, the command it runs and the one-line answer expected.

Shared by ``tests/test_bad_inputs.py`` (in-process, through click's runner) and
``scripts/bad_input_table.py`` (through the real console scripts, printing the table for the record).
``make_fixtures(folder)`` builds every file the cases need (small; the 1 GiB "image" is a sparse file).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "cellsdk" / "data" / "bloodmnist_effnet_lite0_128.int8.onnx"
CHECKPOINT = REPO / "models" / "bloodmnist_effnet_lite0_128.safetensors"
SAMPLES = REPO / "samples" / "bloodmnist_128"
CELL = next(iter(sorted((REPO / "samples" / "pbc_raw" / "ig").glob("*.jpg"))))


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv`` (``{name}`` placeholders are fixture paths), the exit code and message expected."""

    name: str
    script: str  # console script (cellsdk, cellsdk-train, ...) or "python -m <module>"
    argv: tuple[str, ...]
    exit_code: int
    message: str  # a fragment of the one-line answer

    def resolve(self, fixtures: dict[str, Path]) -> list[str]:
        values = {key: str(value) for key, value in fixtures.items()}
        return [part.format(**values) for part in self.argv]


ONNX = "{shipped}"
CASES: tuple[Case, ...] = (
    # arrays are API-level: tests/test_preprocessing.py has the array-contract table
    Case("eval --batch-size 0 (ONNX)", "cellsdk-eval", (ONNX, "--data", "{samples}", "--batch-size", "0"), 2,
         "0 is not in the range x>=1"),
    Case("eval --batch-size -3 (checkpoint)", "cellsdk-eval", ("{checkpoint}", "--data", "{samples}", "--batch-size", "-3"),
         2, "-3 is not in the range x>=1"),
    Case("eval --workers -1", "cellsdk-eval", (ONNX, "--data", "{samples}", "--workers", "-1"), 2,
         "-1 is not in the range x>=0"),
    Case("eval --option bogus=1", "cellsdk-eval", (ONNX, "--data", "{samples}", "--option", "bogus=1"), 1,
         "unknown onnxruntime option 'bogus'"),
    Case("eval --option threads=abc", "cellsdk-eval", (ONNX, "--data", "{samples}", "--option", "threads=abc"), 1,
         "option threads='abc': expected a whole number"),
    Case("convert --seed -1", "cellsdk-convert", ("{checkpoint}", "--out", "{tmp}/conv", "--seed", "-1"), 2,
         "-1 is not in the range 0<=x<=4294967295"),
    Case("convert --calib data without val", "cellsdk-convert",
         ("{checkpoint}", "--out", "{tmp}/conv", "--calib", "{noval}", "--formats", "onnx", "--data-cropped",
          "--verify-cpus", "native", "--calib-samples", "64"), 1, "--eval-split"),
    Case("convert --guard-originals without enough val images", "cellsdk-convert",
         ("{checkpoint}", "--out", "{tmp}/conv", "--calib", "{samples}", "--data-cropped", "--formats", "onnx",
          "--guard-originals", "{samples}/train"), 1, "--guard-originals"),
    Case("train --epochs 0", "cellsdk-train", ("{samples}", "--out", "{tmp}/run", "--epochs", "0"), 2,
         "0 is not in the range x>=1"),
    Case("train --seed -1", "cellsdk-train", ("{samples}", "--out", "{tmp}/run", "--seed", "-1"), 2,
         "-1 is not in the range 0<=x<=4294967295"),
    Case("train data without val", "cellsdk-train", ("{noval}", "--out", "{tmp}/run", "--arch", "test_efficientnet",
                                                     "--pretrained", "none"), 1, "--val-fraction"),
    Case("train --resume, state not written by cellsdk", "cellsdk-train",
         ("{samples}", "--out", "{pickled_run}", "--resume"), 1, "not a training state cellsdk wrote"),
    Case("train --resume, 0-byte state", "cellsdk-train", ("{samples}", "--out", "{empty_state_run}", "--resume"), 1,
         "not a training state cellsdk wrote"),
    Case("train -h", "cellsdk-train", ("-h",), 0, "Usage: cellsdk-train"),
    Case("train --version", "cellsdk-train", ("--version",), 0, "cellsdk, version"),
    Case("eval -h", "cellsdk-eval", ("-h",), 0, "Usage: cellsdk-eval"),
    Case("convert --version", "cellsdk-convert", ("--version",), 0, "cellsdk, version"),
    Case("bench -h", "cellsdk-bench", ("-h",), 0, "Usage: cellsdk-bench"),
    Case("calibrate --version", "cellsdk-calibrate", ("--version",), 0, "cellsdk, version"),
    Case("bench --threads -1", "cellsdk-bench", (ONNX, "--threads", "-1"), 2, "-1 is not in the range 1<=x<=256"),
    Case("bench --duration -1", "cellsdk-bench", (ONNX, "--duration", "-1"), 2, "-1.0 is not in the range x>0"),
    Case("bench an artefact that failed verification", "cellsdk-bench",
         ("{failed_folder}", "--iterations", "2", "--warmup", "0", "--batch", "1", "--no-eager", "--device", "cpu",
          "--quiet"), 1, "artefact failed verification"),
    Case("predict --threads -1", "cellsdk", ("predict", "{cell}", "--threads", "-1"), 2,
         "-1 is not in the range 1<=x<=256"),
    Case("predict --top-k 0", "cellsdk", ("predict", "{cell}", "--top-k", "0"), 2, "0 is not in the range x>=1"),
    Case("predict x.jpg/ (a folder named like an image)", "cellsdk", ("predict", "{dir_jpg}/"), 1,
         "a folder with no image files"),
    Case("predict an empty folder", "cellsdk", ("predict", "{empty}"), 1, "a folder with no image files"),
    Case("predict a 1 GiB file named .jpg", "cellsdk", ("predict", "{huge}"), 1, "not a recognised image file"),
    Case("predict --model, manifest file '../..'", "cellsdk", ("predict", "{cell}", "--model", "{escape_relative}"), 1,
         "is outside the folder"),
    Case("predict --model, manifest file absolute", "cellsdk", ("predict", "{cell}", "--model", "{escape_absolute}"), 1,
         "is outside the folder"),
    Case("predict --model, runtime_options bogus", "cellsdk", ("predict", "{cell}", "--model", "{bogus_options}"), 1,
         "unknown onnxruntime option 'bogus'"),
    Case("predict --model, runtime_options threads='abc'", "cellsdk",
         ("predict", "{cell}", "--model", "{string_threads}"), 1, "option threads='abc': expected a whole number"),
    Case("predict --model, deeply nested manifest", "cellsdk", ("predict", "{cell}", "--model", "{nested_manifest}"), 1,
         "nested deeper than 64 levels"),
    Case("info, deeply nested model metadata", "cellsdk", ("info", "{nested_metadata}"), 1,
         "nested deeper than 64 levels"),
    Case("info, checkpoint truncated to half", "cellsdk", ("info", "{half_checkpoint}"), 1, "corrupt checkpoint"),
    Case("predict an artefact that failed verification", "cellsdk",
         ("predict", "{cell}", "--model", "{failed_folder}/model.int8.onnx"), 0, "verification FAILED"),
    Case("predict --strict, an artefact that failed verification", "cellsdk",
         ("predict", "{cell}", "--model", "{failed_folder}/model.int8.onnx", "--strict"), 1, "refused: strict mode"),
    Case("benchmarks.overhead on a file that is not a model", "python -m cellsdk.benchmarks.overhead",
         ("{junk}", "--image", "{cell}"), 1, "overhead: error: "),
)


def make_fixtures(folder: Path) -> dict[str, Path]:
    """Every file the cases refer to, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"shipped": SHIPPED, "checkpoint": CHECKPOINT, "samples": SAMPLES, "cell": CELL, "tmp": folder}
    (folder / "x.jpg").mkdir(exist_ok=True)
    out["dir_jpg"] = folder / "x.jpg"
    (folder / "empty").mkdir(exist_ok=True)
    out["empty"] = folder / "empty"
    huge = folder / "huge.jpg"
    with open(huge, "wb") as handle:  # sparse: 1 GiB long, no disk used
        handle.truncate(1 << 30)
    out["huge"] = huge
    noval = folder / "noval"
    for split in ("train", "test"):
        if not (noval / split).exists():
            shutil.copytree(SAMPLES / split, noval / split)
    out["noval"] = noval
    for name, file in {"escape_relative": "../../" + SHIPPED.name, "escape_absolute": str(SHIPPED)}.items():
        out[name] = _conversion_folder(folder / name, file, {})
    out["bogus_options"] = _conversion_folder(folder / "bogus_options", "model.int8.onnx", {"bogus": 1}, copy=True)
    out["string_threads"] = _conversion_folder(folder / "string_threads", "model.int8.onnx", {"threads": "abc"},
                                               copy=True)
    nested = folder / "nested_manifest"
    nested.mkdir(exist_ok=True)
    (nested / "manifest.json").write_text('{"artefacts": ' + "[" * 5000 + "]" * 5000 + "}")
    out["nested_manifest"] = nested
    out["nested_metadata"] = _onnx_with_metadata(folder / "nested.onnx", '{"labels": ' + "[" * 5000 + "]" * 5000 + "}")
    half = folder / "half.safetensors"
    half.write_bytes(CHECKPOINT.read_bytes()[: CHECKPOINT.stat().st_size // 2])
    out["half_checkpoint"] = half
    failed = _conversion_folder(folder / "failed", "model.int8.onnx", {}, copy=True, status="failed")
    out["failed_folder"] = failed
    junk = folder / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    out["junk"] = junk
    out["pickled_run"] = _run_folder(folder / "pickled_run", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x05.")
    out["empty_state_run"] = _run_folder(folder / "empty_state_run", b"")
    return out


def _conversion_folder(folder: Path, file: str, options: dict, *, copy: bool = False, status: str = "passed") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy(SHIPPED, folder / file)
    entry = {"file": file, "status": status, "precision": "int8", "backend": "onnxruntime", "runtime_options": options}
    if status == "failed":
        entry["reasons"] = ["accuracy -3.10 points (limit 0.50)"]
    (folder / "manifest.json").write_text(json.dumps({"artefacts": [entry]}))
    return folder


def _onnx_with_metadata(path: Path, text: str) -> Path:
    import onnx

    model = onnx.load(str(SHIPPED))
    for prop in model.metadata_props:
        if prop.key == "cellsdk":
            prop.value = text
    onnx.save(model, str(path))
    return path


def _run_folder(folder: Path, state: bytes) -> Path:
    """A run folder whose last_state.pt is not one cellsdk wrote (a pickle of an int, or empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    from cellsdk.training import TrainConfig

    (folder / "config.json").write_text(json.dumps(TrainConfig.quick(arch="test_efficientnet").to_dict()))
    shutil.copy(CHECKPOINT, folder / "last.safetensors")
    (folder / "last_state.pt").write_bytes(state)
    return folder


def console_command(case: Case) -> list[str]:
    """The command line that runs ``case`` through its console script in this environment."""
    bin_dir = Path(os.environ.get("CELLSDK_BIN", Path(__import__("sys").executable).parent))
    if case.script.startswith("python -m "):
        return [str(bin_dir / "python"), "-m", case.script.removeprefix("python -m ")]
    return [str(bin_dir / case.script)]
