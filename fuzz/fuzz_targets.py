"""Coverage-guided fuzzing (atheris) of the two parsers that read untrusted bytes: image decoding and metadata.

Each target feeds arbitrary bytes to a cellsdk entry point; the only acceptable outcomes are a result or
cellsdk's own typed error. Anything else (an uncaught exception, a crash, a hang) is a finding.

Usage (what tests/test_fuzz.py runs in CI, time-bounded, from the committed corpus):
    python fuzz/fuzz_targets.py image fuzz/corpus/image -max_total_time=20
    python fuzz/fuzz_targets.py metadata fuzz/corpus/metadata -max_total_time=20
New inputs atheris finds that widen coverage are written into the corpus folder; commit the useful ones.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
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

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [CORPUS_DIR] [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
