"""CoreML ``.mlpackage`` (ML program): fp16, int8 linear weight quantization, 6- and 4-bit palettization.

timm's TF-ported networks compute their "same" padding from the input shape
at run time, which coremltools cannot convert; the padding is frozen to
explicit pads first (identical outputs at the export size). Conversion,
weight compression and metadata work on any OS; predictions need
macOS, so off macOS these artefacts are marked ``not verified on this
platform``. Activation quantization in coremltools calibrates by running the
model, which needs macOS: it is not offered here, and the recipe says so.
The metadata goes into ``user_defined_metadata`` under ``cellsdk``.

Examples:
    >>> from cellsdk.converters import get_converter
    >>> get_converter("coreml").precisions
    ('fp16', 'int8', 'int6', 'int4')
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cellsdk.converters.base import Converter, ExportJob, Refused, first_line, register_converter
from cellsdk.converters.torchscript import freeze_same_padding
from cellsdk.metadata import METADATA_KEY, ModelMetadata

__all__ = ["CoreMLConverter"]


def _static_padding_copy(job: ExportJob) -> object:
    """The model with timm's run-time "same" padding frozen (coremltools cannot convert the shape arithmetic)."""
    import copy

    model = copy.deepcopy(job.exported).eval()
    freeze_same_padding(model, job.input_size)
    return model

@contextlib.contextmanager
def scalar_cast_fix() -> Iterator[bool]:
    """While converting, make coremltools' ``int`` / ``float`` / ``bool`` ops fold one-element constant arrays.

    coremltools 9.0 folds ``aten::Int`` of a constant with ``int(array)``, which numpy 2.4 refuses for arrays of
    one element but more than zero dimensions ("only 0-dimensional arrays can be converted to Python scalars");
    attention blocks (EfficientViT, MobileViT, ViT, DeiT, EdgeNeXt) hit it. The fix merged upstream (unreleased)
    takes the element first; this does the same for those constants and leaves every other case to
    coremltools. Yields whether it patched (only where the bug can occur).
    """
    import numpy as np

    try:
        from coremltools.converters.mil.frontend.torch import ops
        from coremltools.converters.mil.mil import Builder as mb
    except ImportError:  # a coremltools without this module layout: nothing to patch
        yield False
        return
    original = getattr(ops, "_cast", None)
    if original is None or tuple(int(x) for x in np.__version__.split(".")[:2]) < (2, 4):
        yield False
        return

    def cast(context: Any, node: Any, dtype: Any, dtype_name: str) -> Any:
        x = ops._get_inputs(context, node, expected=1)[0]
        value = x.val if x.can_be_folded_to_const() else None
        if isinstance(value, np.ndarray) and value.size == 1 and value.ndim > 0:
            context.add(mb.const(val=dtype(value.reshape(()).item()), name=node.name), node.name)
            return None
        return original(context, node, dtype, dtype_name)

    ops._cast = cast
    try:
        yield True
    finally:
        ops._cast = original


_ACTIVATIONS_NOTE = "weights only: activation quantization calibrates by running the model, which needs macOS"


@register_converter("coreml", suffix=".mlpackage", precisions=("fp16", "int8", "int6", "int4"),
                    packages=("coremltools", "torch"), install="pip install 'cellsdk[coreml]'", baseline="fp16")
class CoreMLConverter(Converter):
    """CoreML for Macs and iOS devices (CPU, GPU, Neural Engine)."""

    def convert(self, job: ExportJob, precision: str, out: Path) -> dict[str, Any]:
        import coremltools as ct
        import coremltools.optimize.coreml as cto

        quiet = logging.getLogger("coremltools")
        if quiet.level == logging.NOTSET:  # its graph passes log every removed op at INFO
            quiet.setLevel(logging.WARNING)
        import torch

        size = job.input_size
        batch = ct.RangeDim(lower_bound=1, upper_bound=256, default=1) if job.dynamic_batch else 1
        model = job.cached("static-padding-model", lambda: _static_padding_copy(job))
        # coremltools draws progress bars, prints its passes and warns about untested torch; cellsdk shows one bar
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            with torch.no_grad():
                traced = torch.jit.trace(model, job.example(1))
            try:
                with scalar_cast_fix():
                    model = ct.convert(traced, inputs=[ct.TensorType(name="input", shape=(batch, 3, size, size))],
                                       outputs=[ct.TensorType(name=name) for name in job.metadata.outputs],
                                       convert_to="mlprogram",
                                       compute_precision=ct.precision.FLOAT16,
                                       minimum_deployment_target=ct.target.macOS13)
            except (NotImplementedError, ValueError, TypeError, RuntimeError, AssertionError, KeyError) as err:
                raise Refused(f"coremltools {ct.__version__} cannot convert {job.metadata.arch} "
                              f"({first_line(err)}); use its ONNX, OpenVINO or TorchScript artefacts") from err
            recipe: dict[str, Any] = {}
            if precision == "int8":
                config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"))
                model = cto.linear_quantize_weights(model, config=config)
                recipe = {"method": "coremltools linear weight quantization", "mode": "linear_symmetric",
                          "activations": _ACTIVATIONS_NOTE, "weights_only": True}
            elif precision in ("int6", "int4"):
                bits = int(precision[3:])
                config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=bits))
                model = cto.palettize_weights(model, config=config)
                recipe = {"method": f"coremltools {bits}-bit k-means palettization", "activations": _ACTIVATIONS_NOTE,
                          "weights_only": True}
        model.user_defined_metadata[METADATA_KEY] = job.metadata_for(precision, recipe or None).to_json()
        model.short_description = f"cellsdk {job.metadata.arch} ({precision})"
        model.save(str(out))
        return recipe

    def write_metadata(self, path: Path, metadata: ModelMetadata) -> None:
        import shutil

        import coremltools as ct

        model = ct.models.MLModel(str(path), skip_model_load=True)
        model.user_defined_metadata[METADATA_KEY] = metadata.to_json()
        staged = path.with_name(f".{path.stem}.metadata{path.suffix}")  # coremltools wants .mlpackage / .mlmodel
        model.save(str(staged))
        old = path.with_name(f".{path.name}.old")
        path.rename(old)
        staged.rename(path)
        shutil.rmtree(old, ignore_errors=True)
