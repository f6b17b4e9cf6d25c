"""The fuzz targets as plain functions: run by atheris (fuzz/fuzz_targets.py) and replayed by the test suite.

Each feeds arbitrary bytes to a cellsdk entry point; the only acceptable outcomes are a result or cellsdk's own
typed error. Anything else (an uncaught exception, a wrong tensor) is a finding.
"""

from __future__ import annotations

from cellsdk._io import parse_json
from cellsdk.errors import CellSDKError, InvalidImageError
from cellsdk.metadata import ModelMetadata, Preprocessing
from cellsdk.preprocessing import load_image, preprocess

_SPEC = Preprocessing(input_size=32, crop_mode="fraction", crop_value=0.875)


def fuzz_image(data: bytes) -> None:
    """Bytes as an encoded image: decoded and preprocessed, or InvalidImageError."""
    try:
        tensor = preprocess(load_image(data), _SPEC)
    except InvalidImageError:
        return
    if tensor.shape != (3, 32, 32) or tensor.dtype.name != "float32":
        raise AssertionError(f"preprocess returned {tensor.shape} {tensor.dtype}")


def fuzz_metadata(data: bytes) -> None:
    """Bytes as a metadata document (and as any JSON): ModelMetadata, or MetadataError / ValueError."""
    try:
        ModelMetadata.from_json(data)
    except CellSDKError:
        pass
    try:
        parse_json(data)
    except ValueError:  # invalid JSON, invalid UTF-8, nesting beyond the limit
        pass


TARGETS = {"image": fuzz_image, "metadata": fuzz_metadata}
