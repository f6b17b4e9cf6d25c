"""INT8 recipes by portability: which CPU classes a quantized artefact is safe on.

Without VNNI, x86 CPUs multiply ``uint8`` activations by ``int8`` weights with
``vpmaddubsw``, which adds each pair of products into an ``int16`` and
saturates: ``255 x 127 x 2 = 64,770`` does not fit in ``32,767``. On AVX2 and
AVX-512-without-VNNI CPUs a full-range recipe is therefore computed with
clipped sums, and a model verified on a VNNI machine can lose whole classes
there (onnxruntime issues 5849, 6004, 14642; pytorch issue 103646; OpenVINO's
"saturation issue" page).

* ``portable`` (default): weights quantized to 7 bits (``-64..63``) wherever the
  runtime multiplies ``uint8 x int8``, so no pair sum exceeds
  ``255 x 64 x 2 = 32,640``: the same integers on every x86 class.
* ``vnni``: full 8-bit weights; exact only where dot products do not saturate
  (VNNI, AMX, SSE4-only CPUs, ARM). Offered for those machines; the artefact says so.

Each format maps the name to its quantizer's settings (``converters/onnx.py``
…); :func:`recipe_record` is what the artefact's metadata records about it.

Examples:
    >>> recipe_record("vnni")["unsafe_cpu_classes"]
    ['x86-64-avx2', 'x86-64-avx512']
    >>> recipe_record("portable")["saturation_safe"]
    True
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from cellsdk.errors import ConfigError
from cellsdk.platform.cpu import CPU_CLASSES

__all__ = ["INT8_RECIPES", "capture_root_logging", "check_recipe", "pt2e_calibrated", "recipe_record", "xnnpack_record"]

INT8_RECIPES = ("portable", "vnni")

_NOTES = {
    "portable": "7-bit weights where uint8 x int8 is multiplied: no int16 pair sum saturates, so every x86 class "
                "computes the same integers (with or without VNNI)",
    "vnni": "full 8-bit weights: exact on VNNI / AMX / SSE4-only / ARM CPUs; sums saturate on AVX2 and AVX-512 "
            "without VNNI, where accuracy can drop",
}


def check_recipe(name: str) -> str:
    """``name`` if it is a known recipe, else ConfigError listing them.

    Examples:
        >>> check_recipe("portable")
        'portable'
    """
    if name not in INT8_RECIPES:
        raise ConfigError(f"unknown int8 recipe {name!r}: use {' or '.join(INT8_RECIPES)} "
                          "(portable is safe on every CPU class)")
    return name


def recipe_record(name: str) -> dict[str, Any]:
    """What the metadata records about a recipe's portability.

    Examples:
        >>> recipe_record("portable")["saturation_safe"]
        True
    """
    check_recipe(name)
    unsafe = sorted(c.name for c in CPU_CLASSES.values() if c.int8_saturates) if name == "vnni" else []
    return {"recipe": name, "saturation_safe": not unsafe, "unsafe_cpu_classes": unsafe, "portability": _NOTES[name]}


def xnnpack_record(name: str) -> dict[str, Any]:
    """What the metadata records about an int8 artefact that XNNPACK runs (LiteRT, ExecuTorch): both recipes give
    the same file, since XNNPACK's int8 kernels never multiply ``uint8 x int8`` into a saturating ``int16`` pair
    sum (on AVX2 they widen both operands to ``int16`` first; with VNNI they shift activations to unsigned and
    subtract the weights' sums, exactly; on ARM they use the signed dot products).

    Examples:
        >>> xnnpack_record("vnni")["saturation_safe"], xnnpack_record("vnni")["recipe"]
        (True, 'vnni')
    """
    check_recipe(name)
    return {"recipe": name, "saturation_safe": True, "unsafe_cpu_classes": [],
            "portability": "XNNPACK int8 kernels: no int16 pair sum saturates on any CPU class (AVX2 widens to "
                           "int16 before multiplying, VNNI shifts activations and compensates exactly, ARM uses "
                           "signed dot products); full 8-bit weights under either recipe"}


def pt2e_calibrated(module: Any, quantizer: Any, calibration: Any, *, fold_quantize: bool = True) -> Any:
    """PyTorch 2 export quantization of an exported ``module`` (``torch.export.export(...).module()``) with
    ``quantizer``'s observers, calibrated on every image of ``calibration`` one at a time (the programs take a
    batch of one), then converted.

    Examples:
        >>> quantized = pt2e_calibrated(exported.module(), XNNPACKQuantizer(), calibration)  # doctest: +SKIP
    """
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(module, quantizer)
    with torch.no_grad():
        for image in calibration.arrays:
            prepared(torch.from_numpy(image[None]))
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


@contextlib.contextmanager
def capture_root_logging() -> Iterator[list[logging.LogRecord]]:
    """Keep third-party messages sent through the root logger (ONNX Runtime's quantizer) off the terminal.

    Yields the list the records are collected into, for a one-line summary.

    Examples:
        >>> import logging
        >>> with capture_root_logging() as messages:
        ...     logging.getLogger().warning("Please consider to run pre-processing before quantization")
        >>> len(messages)
        1
    """
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = [_Collect()]
    root.setLevel(logging.INFO)
    try:
        yield records
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)


def summarise_quantizer_messages(records: list[logging.LogRecord]) -> dict[str, int]:
    """Counts of ONNX Runtime's quantizer messages by kind, e.g. ``{"weight scales widened for bias range": 78}``."""
    kinds: Counter[str] = Counter()
    for record in records:
        message = record.getMessage()
        if message.startswith("Increased scale"):
            kinds["weight scales widened so biases fit int32"] += 1
        elif "exceeds the range of a int32" in message:
            kinds["biases clipped to int32"] += 1
        elif record.levelno >= logging.WARNING:
            kinds[f"other warnings ({message[:60]})"] += 1
    return dict(kinds)
