"""Direct exports of a checkpoint to every runtime format, for the runtime tests.

These stand in for cellsdk-convert until the conversion toolchain lands: each
writes the cellsdk metadata into the format's own slot.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from cellsdk.metadata import METADATA_KEY, ModelMetadata


def _example(metadata: ModelMetadata, batch: int = 2) -> torch.Tensor:
    size = metadata.preprocessing.input_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def export_onnx(model: torch.nn.Module, metadata: ModelMetadata | None, path: Path) -> Path:
    import onnx

    example = _example(metadata) if metadata else torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, external_data=False, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(path))
    if metadata is not None:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, {METADATA_KEY: metadata.to_json()})
        onnx.save(proto, str(path))
    return path


def export_torchscript(model: torch.nn.Module, metadata: ModelMetadata, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.freeze(torch.jit.trace(model, _example(metadata)))
        torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: metadata.to_json()})
    return path


def export_openvino(onnx_path: Path, metadata: ModelMetadata, path: Path) -> Path:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(metadata.to_json(), [METADATA_KEY])
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def export_coreml(model: torch.nn.Module, metadata: ModelMetadata, path: Path) -> Path:
    import coremltools as ct

    size = metadata.preprocessing.input_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, _example(metadata, batch=1))
        converted = ct.convert(traced, inputs=[ct.TensorType(name="input", shape=(1, 3, size, size))],
                               convert_to="mlprogram", minimum_deployment_target=ct.target.macOS13)
    converted.user_defined_metadata[METADATA_KEY] = metadata.to_json()
    converted.save(str(path))
    return path


def export_litert(model: torch.nn.Module, metadata: ModelMetadata, path: Path) -> Path:
    import contextlib
    import io

    import litert_torch

    from cellsdk.converters.base import plain_tensor_copy
    from cellsdk.converters.litert import write_tflite_metadata

    raw = path.with_name(f"{path.name}.raw")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        litert_torch.convert(plain_tensor_copy(model), (_example(metadata, batch=1),)).export(str(raw))
    write_tflite_metadata(raw, path, metadata.to_json())
    raw.unlink()
    return path


def export_executorch(model: torch.nn.Module, metadata: ModelMetadata, path: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from cellsdk.converters.base import plain_tensor_copy
    from cellsdk.converters.executorch import METHOD, metadata_slot

    slot = torch.tensor(list(metadata_slot(metadata.to_json())), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(plain_tensor_copy(model), (_example(metadata, batch=1),))
        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()],
                                              constant_methods={METHOD: slot}).to_executorch()
    path.write_bytes(program.buffer)
    return path


def export_all(model: torch.nn.Module, metadata: ModelMetadata, folder: Path) -> dict[str, Path]:
    """Every format whose exporter is installed, by backend name."""
    model = model.eval()
    out = {"onnxruntime": export_onnx(model, metadata, folder / "model.onnx"),
           "torchscript": export_torchscript(model, metadata, folder / "model.torchscript")}
    if importlib.util.find_spec("openvino"):
        out["openvino"] = export_openvino(out["onnxruntime"], metadata, folder / "model.xml")
    if importlib.util.find_spec("coremltools"):
        out["coreml"] = export_coreml(model, metadata, folder / "model.mlpackage")
    if importlib.util.find_spec("litert_torch") and importlib.util.find_spec("ai_edge_litert"):
        out["litert"] = export_litert(model, metadata, folder / "model.tflite")
    if importlib.util.find_spec("executorch"):
        out["executorch"] = export_executorch(model, metadata, folder / "model.pte")
    manifest = {"cellsdk_manifest": 1, "artefacts": [
        {"file": p.name, "backend": name, "precision": "fp32", "status": "passed"} for name, p in out.items()]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return out


def convert_tiny(checkpoint: Path, out: Path, formats: tuple[str, ...], precisions: tuple[str, ...] = ()) -> Any:
    """The committed tiny checkpoint through cellsdk-convert at fp32 (and ``precisions``) in ``formats`` (gate: the
    tiny one, this machine's CPU class only), as the per-format test modules use it."""
    from cellsdk.converters import ConvertConfig, convert
    from cellsdk.converters.targets import CpuTargets
    from tests.conftest import SAMPLES, TINY_GATE

    config = ConvertConfig(formats=formats, precisions=precisions, calib=str(SAMPLES), data_cropped=True,
                           calib_samples=64, verify=TINY_GATE,
                           cpu_targets=CpuTargets.parse("native"))
    return convert(checkpoint, out, config, progress=False)
