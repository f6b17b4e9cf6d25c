"""Property-based tests (hypothesis): whatever comes in, the answer is the documented result or a typed error.

- preprocessing: any array (size, dtype, layout, values), PIL image (size, mode) or byte string;
- metadata and manifests: any JSON document, and valid documents with one field replaced by any JSON;
- option validators: ``--option KEY=VALUE`` parsing, backend runtime options, the range checks, and the CLI
  itself with arbitrary option values.

``CELLSDK_HYPOTHESIS_EXAMPLES`` (default 200) sets the examples per property; a soak run sets thousands.
"""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cellsdk._validate import require_float, require_int
from cellsdk.artefacts.manifest import choose_artefact, read_manifest
from cellsdk.backends import backend_names, get_backend
from cellsdk.errors import CellSDKError, ConfigError, InvalidImageError, MetadataError
from cellsdk.metadata import ModelMetadata, Preprocessing
from cellsdk.preprocessing import preprocess
from tests.conftest import SAMPLES

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed: pip install 'cellsdk[test]'")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

SPEC = Preprocessing(input_size=16, crop_mode="fraction", crop_value=0.875, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
LOW = (0 - np.asarray(SPEC.mean)) / np.asarray(SPEC.std)
HIGH = (1 - np.asarray(SPEC.mean)) / np.asarray(SPEC.std)
EXAMPLES = int(os.environ.get("CELLSDK_HYPOTHESIS_EXAMPLES", "200"))  # a soak run sets more
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _documented_tensor(tensor: np.ndarray) -> None:
    assert tensor.shape == (3, 16, 16) and tensor.dtype == np.float32 and np.isfinite(tensor).all()
    for channel in range(3):  # 0..1 pixels, normalised by the spec's mean and std
        assert LOW[channel] - 1e-5 <= tensor[channel].min() and tensor[channel].max() <= HIGH[channel] + 1e-5


# ---------------------------------------------------------------------------------------------- preprocessing

_DTYPES = st.sampled_from([np.uint8, np.uint16, np.int8, np.int16, np.int32, np.int64, np.uint32, np.float16,
                           np.float32, np.float64, np.bool_, np.complex64])
_SHAPES = st.one_of(
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),                         # H x W
    st.tuples(st.integers(1, 24), st.integers(1, 24), st.sampled_from([1, 2, 3, 4, 5])),        # H x W x C
    st.tuples(st.sampled_from([1, 3, 4]), st.integers(5, 24), st.integers(5, 24)),              # C x H x W
    hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),                          # anything else
)


@FAST
@given(st.data())
def test_any_array_gives_the_documented_tensor_or_a_typed_error(data):
    dtype, shape = data.draw(_DTYPES), data.draw(_SHAPES)
    array = data.draw(hnp.arrays(dtype, shape))
    try:
        tensor = preprocess(array, SPEC)
    except InvalidImageError as err:
        assert str(err).startswith("<array")  # names the input
        return
    _documented_tensor(tensor)
    # what was accepted follows the contract: no negative values, floats within 0..1, wide ints within 8 bits
    if array.dtype.kind == "f":
        assert np.nanmin(array) >= 0 and np.nanmax(array) <= 1
    if array.dtype.kind in "iu" and array.dtype not in (np.uint8, np.uint16):
        assert array.min() >= 0 and array.max() <= 255


_MODES = st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "I", "I;16", "F", "CMYK", "YCbCr", "HSV", "LAB", "La",
                          "RGBa", "PA"])


@FAST
@given(_MODES, st.integers(1, 40), st.integers(1, 40), st.integers(0, 255))
def test_any_pil_image_gives_the_documented_tensor_or_a_typed_error(mode, width, height, value):
    try:
        image = Image.new(mode, (width, height), value if mode not in ("RGB", "RGBA", "CMYK", "YCbCr", "HSV", "LAB",
                                                                       "RGBa") else None)
    except (ValueError, TypeError):
        return  # Pillow cannot make this one
    try:
        tensor = preprocess(image, SPEC)
    except InvalidImageError:
        return
    _documented_tensor(tensor)


@FAST
@given(st.binary(max_size=2048))
def test_any_bytes_give_the_documented_tensor_or_a_typed_error(data):
    try:
        tensor = preprocess(data, SPEC)
    except InvalidImageError as err:
        assert "bytes>" in str(err)
        return
    _documented_tensor(tensor)


@FAST
@given(st.sampled_from(["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"]), st.integers(1, 60), st.integers(1, 60),
       st.integers(0, 2**31 - 1), st.integers(0, 400))
def test_damaged_encoded_images_give_the_documented_tensor_or_a_typed_error(fmt, width, height, seed, cut):
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format=fmt)
    raw = bytearray(buffer.getvalue())
    for position in rng.integers(0, len(raw), size=3):  # flip a few bytes, then maybe truncate
        raw[position] ^= int(rng.integers(1, 255))
    if cut:
        raw = raw[: max(1, len(raw) - cut)]
    try:
        tensor = preprocess(bytes(raw), SPEC)
    except InvalidImageError:
        return
    _documented_tensor(tensor)


# ------------------------------------------------------------------------------------- metadata and manifests

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_VALID = ModelMetadata(labels=("a", "b", "c"), arch="tiny", preprocessing=SPEC).to_dict()


@FAST
@given(_JSON)
def test_any_json_is_metadata_or_a_metadata_error(document):
    try:
        meta = ModelMetadata.from_json(json.dumps(document))
    except MetadataError:
        return
    assert ModelMetadata.from_json(meta.to_json()) == meta  # what loads, round-trips


@FAST
@given(st.sampled_from(sorted(_VALID)), _JSON)
def test_valid_metadata_with_any_field_replaced_is_metadata_or_a_metadata_error(field, value):
    document = {**_VALID, field: value}
    try:
        meta = ModelMetadata.from_dict(json.loads(json.dumps(document)))
    except MetadataError:
        return
    assert ModelMetadata.from_json(meta.to_json()) == meta


@FAST
@given(st.integers(1, 3000))
def test_deeply_nested_metadata_is_a_metadata_error(depth):
    text = '{"labels": ' + "[" * depth + "]" * depth + "}"
    try:
        ModelMetadata.from_json(text)
    except MetadataError:
        pass


_FILE_NAMES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["model.onnx", "../model.onnx", "/etc/passwd.onnx", "a/../../b.onnx", "sub/m.onnx", "..", ".",
                     "", "C:\\m.onnx", "m.onnx\x00", "model.xml", "link.onnx"]),
    st.integers(), st.none(),
)
_ENTRY = st.fixed_dictionaries({"file": _FILE_NAMES}, optional={
    "status": st.sampled_from(["passed", "failed", "not verified on this platform", "weird"]) | _JSON,
    "backend": st.sampled_from(["onnxruntime", "openvino", "nope"]) | _JSON,
    "precision": st.sampled_from(["fp32", "int8", "fp16"]) | _JSON,
    "latency_ms": st.floats() | _JSON,
    "runtime_options": st.dictionaries(st.sampled_from(["threads", "bogus", "precision"]), _JSON, max_size=2) | _JSON,
})


@settings(max_examples=max(EXAMPLES * 3 // 4, 1), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(_JSON, st.fixed_dictionaries({"artefacts": st.lists(_ENTRY, max_size=4)})))
@example({"artefacts": [{"file": "0", "status": "passed", "backend": [None]}]})  # found by a 2,000-example soak
def test_any_manifest_loads_inside_its_folder_or_fails_with_a_typed_error(tmp_path_factory, manifest):
    folder = tmp_path_factory.mktemp("conv")
    (folder / "model.onnx").write_bytes(b"not really a model")
    (folder / "link.onnx").symlink_to("/etc/hostname")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    try:
        read_manifest(folder)
        path, _, _ = choose_artefact(folder)
    except CellSDKError:
        return
    assert folder.resolve() in path.resolve().parents  # never a file outside the folder


# ------------------------------------------------------------------------------------------ option validators

@FAST
@given(st.lists(st.text(max_size=15), max_size=4))
def test_option_pairs_parse_or_fail_in_one_line(pairs):
    import click

    from cellsdk.cli.options import parse_key_values

    try:
        options = parse_key_values(tuple(pairs))
    except click.ClickException as err:
        assert "\n" not in err.message and "KEY=VALUE" in err.message
        return
    assert all(isinstance(key, str) and key for key in options)


@FAST
@given(st.sampled_from(backend_names()), st.dictionaries(st.text(max_size=12), _JSON, max_size=3))
def test_backend_options_are_accepted_or_refused_with_a_config_error(name, options):
    backend = get_backend(name)
    try:
        checked = backend.check_options(options)
    except ConfigError as err:
        assert name in str(err)
        return
    assert set(checked) <= set(backend.option_types())


@FAST
@given(st.one_of(_JSON, st.floats(allow_nan=True, allow_infinity=True)), st.integers(-5, 5))
def test_range_checks_return_the_value_or_a_config_error(value, minimum):
    for check in (lambda: require_int("n", value, minimum=minimum), lambda: require_float("x", value, minimum=minimum)):
        try:
            result = check()
        except ConfigError:
            continue
        assert result == value and result >= minimum and not (isinstance(result, float) and math.isnan(result))


_CLI_VALUES = st.one_of(st.integers(-(2**40), 2**40).map(str), st.floats().map(str), st.text(max_size=8),
                        st.sampled_from(["0", "-1", "1e9", "nan", "inf", "", " ", "3.5"]))


@pytest.mark.slow  # starts the CLI in processes for many examples
@settings(max_examples=max(EXAMPLES // 3, 1), deadline=None)
@given(st.sampled_from(["--top-k", "--threads"]), _CLI_VALUES)
def test_the_cli_answers_any_option_value_in_one_line(option, value):
    from cellsdk.cli import cli

    image = str(sorted(SAMPLES.glob("test/*/*.jpg"))[0])
    result = CliRunner().invoke(cli, ["predict", image, option, value])
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
