"""The conversion toolchain, installed as ``cellsdk.converters``.

Checkpoint -> ONNX / TorchScript / OpenVINO / CoreML at fp32, fp16 and int8
(CoreML: fp16, int8 weights, 6- and 4-bit palettization), each calibrated on
real images where it is quantized, loaded back through ``cellsdk.Classifier``
and checked class by class against the fp32 PyTorch model, with a
``manifest.json`` of what was verified. It depends on torch and the format
libraries; the runtime (``cellsdk``) never imports it.

Examples:
    >>> from cellsdk.converters import ConvertConfig, convert, format_manifest_table
    >>> result = convert("runs/a/best.safetensors", "runs/a/converted",
    ...                  ConvertConfig(precisions=("fp16", "int8"), calib="data/bloodmnist_128"))  # doctest: +SKIP
    >>> print(format_manifest_table(result.manifest))  # doctest: +SKIP
"""

from __future__ import annotations

# importing the format modules registers them; this order is the order formats are converted and listed
# isort: off
from cellsdk.converters.base import Converter, ExportJob, converter_names, get_converter, register_converter
from cellsdk.converters import onnx  # noqa: F401
from cellsdk.converters import torchscript  # noqa: F401
from cellsdk.converters import openvino  # noqa: F401
from cellsdk.converters import coreml  # noqa: F401
from cellsdk.converters import litert  # noqa: F401
from cellsdk.converters import executorch  # noqa: F401
# isort: on
from cellsdk.converters.calibration import ImageSet, calibration_set, evaluation_set
from cellsdk.converters.gate import VerifyConfig, verify_artefact
from cellsdk.converters.pipeline import ConversionResult, ConvertConfig, convert, format_manifest_table

__all__ = [
    "ConversionResult",
    "ConvertConfig",
    "Converter",
    "ExportJob",
    "ImageSet",
    "VerifyConfig",
    "calibration_set",
    "convert",
    "converter_names",
    "evaluation_set",
    "format_manifest_table",
    "get_converter",
    "register_converter",
    "verify_artefact",
]
