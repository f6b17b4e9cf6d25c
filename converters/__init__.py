"""The conversion toolchain, installed as ``cellsdk.converters``.

Checkpoint -> ONNX / TorchScript / OpenVINO / CoreML, with calibration, the
per-class verification gate and the manifest. It depends on torch and the
format libraries; the runtime (``cellsdk``) never imports it.

Not yet available: ``cellsdk-convert`` arrives with the conversion issue.
"""

from __future__ import annotations

__all__: list[str] = []

AVAILABLE = False
