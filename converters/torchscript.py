"""TorchScript: fp32 by trace + freeze; int8 by torch FX post-training quantization with the x86 engine.

timm's TF-ported networks (``tf_efficientnet_*``) pad "same" by computing pads
from the input shape at run time, which FX cannot trace; for a fixed input
size those pads are constants, so :func:`freeze_same_padding` replaces each
such convolution by an explicit zero-pad and a plain convolution (identical
arithmetic) before quantizing. The metadata goes into ``_extra_files``.

Examples:
    >>> from cellsdk.converters import get_converter
    >>> get_converter("torchscript").precisions
    ('fp32', 'int8')
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

from cellsdk.converters.base import Converter, ExportJob, Refused, first_line, register_converter
from cellsdk.converters.int8 import recipe_record
from cellsdk.errors import CellSDKError
from cellsdk.metadata import METADATA_KEY, ModelMetadata

__all__ = ["TorchScriptConverter", "freeze_same_padding"]


def freeze_same_padding(model: Any, input_size: int) -> int:
    """Replace timm's dynamic "same"-padding convolutions by static pad + conv for one input size.

    Returns the number of layers replaced. The outputs are unchanged at ``input_size``.

    Examples:
        >>> freeze_same_padding(model, 128)  # doctest: +SKIP
        21
    """
    import torch

    try:
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.padding import get_same_padding
    except ImportError:  # not a timm model, nothing to freeze
        return 0
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [module.register_forward_pre_hook(
        lambda _m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, module in model.named_modules() if isinstance(module, Conv2dSame)]
    with torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    for hook in hooks:
        hook.remove()
    for name, conv in [(n, m) for n, m in model.named_modules() if isinstance(m, Conv2dSame)]:
        height, width = sizes[name]
        pad_h = get_same_padding(height, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pad_w = get_same_padding(width, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                                conv.stride, 0, conv.dilation, conv.groups, conv.bias is not None)  # type: ignore[arg-type]
        plain.load_state_dict(conv.state_dict())
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        pad = torch.nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        setattr(parent, child, torch.nn.Sequential(pad, plain))
    return len(sizes)


@register_converter("torchscript", suffix=".torchscript", precisions=("fp32", "int8"), packages=("torch",),
                    install="pip install 'cellsdk[train]'")
class TorchScriptConverter(Converter):
    """TorchScript archives for LibTorch services and CUDA boxes."""

    def convert(self, job: ExportJob, precision: str, out: Path) -> dict[str, Any]:
        import torch

        recipe: dict[str, Any] = {}
        model = job.exported
        if precision == "int8":
            try:
                model, recipe = self._quantize(job)
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    model(job.example(1))  # FX can convert a graph that then fails to run (e.g. EdgeNeXt)
            except (CellSDKError, MemoryError):
                raise
            except Exception as err:  # FX's failures on this architecture: refused, with why
                raise Refused(f"torch FX cannot quantize {job.metadata.arch} ({first_line(err)}); its int8 ONNX "
                              "and OpenVINO artefacts are the int8 choices for this architecture") from err
        with warnings.catch_warnings():  # torch 2.14 marks torch.jit deprecated; LibTorch still runs it
            warnings.simplefilter("ignore")
            with torch.no_grad():
                traced = torch.jit.freeze(torch.jit.trace(model, job.example(1)).eval())
            metadata = job.metadata_for(precision, recipe or None)
            torch.jit.save(traced, str(out), _extra_files={METADATA_KEY: metadata.to_json()})
        return recipe

    def write_metadata(self, path: Path, metadata: ModelMetadata) -> None:
        import torch

        staged = path.with_name(f".{path.name}.metadata")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu")
            torch.jit.save(module, str(staged), _extra_files={METADATA_KEY: metadata.to_json()})
        os.replace(staged, path)

    def _quantize(self, job: ExportJob) -> tuple[Any, dict[str, Any]]:
        import torch
        from torch.ao.quantization import QConfig, get_default_qconfig_mapping
        from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        calibration = job.require_calibration("torchscript")
        # contiguous weights: FX int8 from a channels-last model gives garbage (torch 2.14, x86 engine)
        model = copy.deepcopy(job.exported).eval().to(memory_format=torch.contiguous_format)
        frozen = freeze_same_padding(model, job.input_size)
        torch.backends.quantized.engine = "x86"  # qnnpack gives wrong answers on x86
        # x86's default qconfig quantizes activations to 7 bits (reduce_range) for CPUs without VNNI; on
        # EfficientNet-Lite0 / BloodMNIST that cost 1.3 accuracy points and 7 points of monocyte recall.
        # Full 8-bit activations with the stem and classifier kept in float match fp32 on VNNI CPUs; the
        # portable recipe keeps them and puts the weights in 7 bits instead (-64..63), so uint8 x int8
        # pair sums stay within int16 on AVX2 too (see cellsdk.converters.int8).
        portable = job.int8_recipe == "portable"
        weight_range = {"quant_min": -64, "quant_max": 63} if portable else {}
        qconfig = QConfig(activation=HistogramObserver.with_args(reduce_range=False),
                          weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                                    qscheme=torch.per_channel_symmetric,
                                                                    **weight_range))
        mapping = get_default_qconfig_mapping("x86").set_global(qconfig)
        cfg = getattr(job.model, "pretrained_cfg", {}) or {}
        kept_float = [job.module_prefix + name for name in (cfg.get("first_conv"), cfg.get("classifier"))
                      if isinstance(name, str) and job.module_prefix + name in dict(model.named_modules())]
        if "cam" in dict(model.named_modules()):  # the class-activation-map output stays float (cellsdk.explain)
            kept_float.append("cam")
        for name in kept_float:
            mapping.set_module_name(name, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_fx(model, mapping, example_inputs=(job.example(1),))
            with torch.no_grad():
                for batch in calibration.batches(32):
                    prepared(torch.from_numpy(batch))
            quantized = convert_fx(prepared)
        recipe = {"method": "torch FX post-training static quantization", "engine": "x86",
                  "weights": "int8 per-channel symmetric" + (", 7-bit range (-64..63)" if portable else ""),
                  "activations": "uint8, full range, histogram observer",
                  "float_layers": kept_float, "calibration_images": len(calibration),
                  "static_same_padding_layers": frozen, **recipe_record(job.int8_recipe)}
        return quantized, recipe
