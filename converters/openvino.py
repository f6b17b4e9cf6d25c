"""OpenVINO IR: fp32 or fp16 weights, int8 by NNCF post-training quantization on the OpenVINO model.

The IR is converted from the fp32 ONNX export. int8's ``portable`` recipe
turns on NNCF's overflow fix in every layer (7-bit weights, see
:mod:`cellsdk.converters.int8`); ``vnni`` turns it off. OpenVINO runs an fp32 IR in
bf16 on CPUs with bf16 unless ``INFERENCE_PRECISION_HINT`` is ``f32``, so the
float artefacts are verified (and, through the manifest, run) with that hint.
The metadata goes into ``rt_info`` under ``cellsdk``.

cellsdk sends no usage data: OpenVINO's converter and NNCF would send Google
Analytics events through ``openvino-telemetry`` (and keep a client id in
``~/intel``) unless told not to; :func:`without_telemetry` swaps in their own
stubs before either runs. Its sends also ran in a process forked from the
multi-threaded converter, which once deadlocked in ``getaddrinfo`` and left a
conversion waiting for it forever.

Examples:
    >>> from cellsdk.converters import get_converter
    >>> get_converter("openvino").precisions
    ('fp32', 'fp16', 'bf16', 'int8')
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from cellsdk.converters.base import Converter, ExportJob, register_converter
from cellsdk.converters.int8 import recipe_record
from cellsdk.converters.onnx import export_fp32_onnx
from cellsdk.metadata import METADATA_KEY, ModelMetadata

__all__ = ["OpenVinoConverter", "without_telemetry"]

_OVC_MODULES = ("openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.utils",
                "openvino.tools.ovc.main")


def without_telemetry() -> None:
    """Keep OpenVINO's converter and NNCF from sending telemetry, in this process, from now on.

    ``openvino_telemetry`` is made unimportable, so both fall back to the stubs they ship for when it is not
    installed; where they were imported already, their stubs are put in place of the real thing.

    Examples:
        >>> without_telemetry() is None
        True
    """
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # `import openvino_telemetry` now raises
    if any(name in sys.modules for name in _OVC_MODULES):
        from openvino.tools.ovc import telemetry_stub

        for name in _OVC_MODULES:
            module = sys.modules.get(name)
            if module is not None and hasattr(module, "tm"):
                module.tm = telemetry_stub  # type: ignore[attr-defined]
    for name in ("nncf.telemetry.wrapper", "nncf.telemetry.decorator"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "telemetry"):
            from unittest.mock import MagicMock

            module.telemetry = MagicMock()  # type: ignore[attr-defined]  # NNCF's own stub (NNCFTelemetryStub)


@register_converter("openvino", suffix=".xml", precisions=("fp32", "fp16", "bf16", "int8"),
                    packages=("openvino", "nncf", "onnx", "onnxscript"), install="pip install 'cellsdk[openvino,convert]'")
class OpenVinoConverter(Converter):
    """OpenVINO IR (``.xml`` + ``.bin``) for Intel CPUs, GPUs and NPUs.

    ``bf16`` is an fp32 IR whose metadata says bf16: the backend then asks OpenVINO for bf16 arithmetic
    (``INFERENCE_PRECISION_HINT``), which CPUs with AVX-512 BF16 or AMX run natively and others in f32. Like int8
    it is verified per CPU class.
    """

    def convert(self, job: ExportJob, precision: str, out: Path) -> dict[str, Any]:
        without_telemetry()
        import openvino as ov

        model = ov.convert_model(str(export_fp32_onnx(job)))
        recipe: dict[str, Any] = {}
        if precision == "int8":
            import nncf

            calibration = job.require_calibration("openvino")
            batches = list(calibration.batches(1))
            # NNCF's overflow fix stores weights in 7 bits so AVX2 / AVX-512 CPUs without VNNI do not saturate;
            # its default fixes the first layer only. portable: every layer; vnni: none.
            fix = nncf.OverflowFix.ENABLE if job.int8_recipe == "portable" else nncf.OverflowFix.DISABLE
            with _quiet_nncf():
                model = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                                      advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=fix))
            recipe = {"method": "NNCF post-training quantization", "preset": "performance (symmetric)",
                      "overflow_fix": fix.value, "calibration_images": len(calibration),
                      **recipe_record(job.int8_recipe)}
        model.set_rt_info(job.metadata_for(precision, recipe or None).to_json(), [METADATA_KEY])
        ov.save_model(model, str(out), compress_to_fp16=precision == "fp16")
        return recipe

    def write_metadata(self, path: Path, metadata: ModelMetadata) -> None:
        import openvino as ov

        model = ov.Core().read_model(str(path))
        model.set_rt_info(metadata.to_json(), [METADATA_KEY])
        staged = path.with_name(f".{path.stem}.metadata.xml")
        ov.save_model(model, str(staged), compress_to_fp16=False)  # the weights as they are
        del model
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)

    def verify_options(self, precision: str) -> dict[str, Any]:
        # the backend's default for this precision (f32 for fp32 / fp16 / int8: left to itself OpenVINO runs
        # them in bf16 on bf16 CPUs), written out so the manifest says how the artefact was verified
        from cellsdk.backends.openvino import precision_hint

        hint = precision_hint(precision)
        return {"precision": hint} if hint else {}


class _quiet_nncf:
    """Keep NNCF's progress output and INFO logging off the terminal."""

    def __enter__(self) -> None:
        import logging

        self._logger = logging.getLogger("nncf")
        self._level = self._logger.level
        self._logger.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)
