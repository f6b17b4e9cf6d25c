from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cellsdk import preprocessing
from cellsdk.errors import InvalidImageError
from cellsdk.metadata import Preprocessing
from cellsdk.preprocessing import load_image, prepare_image, preprocess, preprocess_batch, to_input_array
from tests.conftest import RAW_SAMPLES, SAMPLES

SPEC = Preprocessing(input_size=16)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    fmt = {"CMYK": "JPEG", "I": "TIFF", "F": "TIFF"}.get(image.mode, "PNG")
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _mode_image(mode: str) -> Image.Image:
    base = Image.new("RGB", (12, 10), (200, 50, 20))
    if mode == "P":
        return base.convert("P")
    if mode == "PA":  # palette with a transparent index
        image = base.convert("P")
        image.info["transparency"] = 0
        return image
    if mode == "I;16":
        return Image.fromarray(np.full((10, 12), 65535, dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(np.full((10, 12), 40000, dtype=np.int32), mode="I")
    if mode == "F":
        return Image.fromarray(np.full((10, 12), 0.5, dtype=np.float32), mode="F")
    return base.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P", "PA", "I;16", "I", "F", "CMYK", "1", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    image = _mode_image(mode)
    for source in (image, _png(image) if mode not in ("PA", "YCbCr") else image):
        rgb = load_image(source)
        assert rgb.mode == "RGB" and rgb.size == (12, 10)
        assert preprocess(source, SPEC).shape == (3, 16, 16)


def test_alpha_is_composited_on_white_and_16_bit_is_scaled():
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(transparent).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(_mode_image("I;16")).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((3, 3), 257 * 100, np.uint16)).getpixel((0, 0)) == (100, 100, 100)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert load_image(buffer.getvalue()).size == (10, 30)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((8, 9), np.uint8),
        np.zeros((8, 9, 1), np.uint8),
        np.zeros((8, 9, 3), np.uint8),
        np.zeros((8, 9, 4), np.uint8),
        np.ones((8, 9, 3), np.float32),
        np.full((8, 9, 3), 200, np.int64),
        np.zeros((8, 9), bool),
        np.zeros((8, 9, 3), np.uint16),
    ],
)
def test_numpy_inputs(array):
    assert load_image(array).size == (9, 8)


# The array contract (load_image's docstring): what each dtype / range / layout means, and what is refused.
_PIXEL = np.array([[[200, 100, 10]]], np.uint8).repeat(6, 0).repeat(7, 1)  # 6 x 7 x 3


@pytest.mark.parametrize("array, expected", [
    (_PIXEL, (200, 100, 10)),
    (_PIXEL.astype(np.int32), (200, 100, 10)),           # np.asarray(img).astype(int): 8-bit values
    (_PIXEL.astype(np.int64), (200, 100, 10)),
    (_PIXEL.astype(np.uint32), (200, 100, 10)),
    (_PIXEL.astype(np.float32) / 255, (200, 100, 10)),   # float 0-1
    (_PIXEL.astype(np.float64) / 255, (200, 100, 10)),
    (_PIXEL.astype(np.float16) / 255, (200, 100, 10)),
    (_PIXEL.astype(np.uint16) * 257, (200, 100, 10)),     # uint16: the full 16-bit range
    (np.ones((6, 7), bool), (255, 255, 255)),
    (np.full((6, 7, 1), 7, np.uint8), (7, 7, 7)),
    (np.concatenate([_PIXEL, np.full((6, 7, 1), 255, np.uint8)], -1), (200, 100, 10)),  # opaque RGBA
], ids=["uint8", "int32", "int64", "uint32", "float32", "float64", "float16", "uint16", "bool", "HW1", "RGBA"])
def test_array_contract_accepts(array, expected):
    assert load_image(array).getpixel((3, 2)) == expected


@pytest.mark.parametrize("array, message", [
    (_PIXEL.astype(np.float64), "float pixels must lie in 0-1"),                 # 0-255 floats: no guessing
    (_PIXEL.astype(np.float32) / 127.5 - 1, "looks normalised already"),         # -1..1
    (np.moveaxis(_PIXEL, -1, 0).copy(), "looks channel-first"),                  # 3 x H x W
    (np.moveaxis(_PIXEL, -1, 0)[:1].copy(), "looks channel-first"),              # 1 x H x W
    (_PIXEL.astype(np.int32) * 16, "integer arrays other than uint16 are read as 8-bit"),
    (-_PIXEL.astype(np.int16), "negative pixel values"),
    (np.full((6, 7, 3), np.nan), "NaN"),
    (_PIXEL.astype(np.complex64), "unsupported array dtype"),
    (np.zeros((6, 7, 5), np.uint8), "unsupported array shape"),
    (np.zeros((2, 6, 7, 3), np.uint8), "unsupported array shape"),
    (np.zeros((0, 7, 3), np.uint8), "no pixels"),
    (np.zeros((3, 64, 3), np.uint8), r"shape \(3, 64, 3\) is ambiguous: .*np.moveaxis.*Image.fromarray"),
    (np.zeros((4, 9, 1), np.uint8), "is ambiguous"),
], ids=["float-0-255", "float-normalised", "CHW", "1HW", "int-12bit", "negative", "nan", "complex", "5-channels",
        "4-D", "empty", "3H3", "4H1"])
def test_array_contract_refuses_what_is_ambiguous(array, message):
    with pytest.raises(InvalidImageError, match=message):
        load_image(array)


@pytest.mark.parametrize(("scale", "grey"), [(1 / 255, 200), (1.0, 200), (257.0, 200)],
                         ids=["float-0-1", "float-0-255", "float-0-65535"])
def test_a_float_image_file_is_read_by_its_range_as_imagej_does(tmp_path, scale, grey):
    path = tmp_path / "stain.tif"
    Image.fromarray(_PIXEL[..., 0].astype(np.float32) * np.float32(scale), mode="F").save(path)
    assert load_image(path).getpixel((3, 2)) == (grey, grey, grey)


def test_a_float_image_file_outside_every_range_is_refused_with_advice_for_the_file(tmp_path):
    path = tmp_path / "stain.tif"
    Image.fromarray(_PIXEL[..., 0].astype(np.float32) - 300, mode="F").save(path)  # negative: no camera writes it
    with pytest.raises(InvalidImageError) as caught:
        load_image(path)
    message = str(caught.value)
    assert "32-bit floating-point image file with values -100 to" in message and "8-bit" in message
    assert "astype" not in message and "array" not in message  # nothing a user holding only the file cannot do
    from click.testing import CliRunner

    from cellsdk.cli import predict_command

    result = CliRunner().invoke(predict_command, [str(path), "--quiet"])
    assert result.exit_code == 1 and f"error: {message}" in result.output and "Traceback" not in result.output


def test_normalisation_and_channel_order():
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    spec = Preprocessing(input_size=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = to_input_array(red, spec)
    assert x.dtype == np.float32 and x.shape == (3, 4, 4)
    assert x[:, 0, 0].tolist() == [1.0, -1.0, -1.0]
    bgr = to_input_array(red, Preprocessing(input_size=4, color_order="BGR"))
    assert bgr[:, 0, 0].tolist() == [-1.0, -1.0, 1.0]


def test_pixel_crop_matches_the_dataset_recipe():
    """The 200 px crop of a raw original, resized to 128, is what bloodmnist_128 holds."""
    raw = sorted((RAW_SAMPLES / "basophil").glob("*.jpg"))[0]
    spec = Preprocessing(input_size=128, crop_mode="pixels", crop_value=200)
    image = Image.open(raw)
    width, height = image.size
    left, top = (width - 200) // 2, (height - 200) // 2
    expected = image.convert("RGB").crop((left, top, left + 200, top + 200)).resize((128, 128), Image.BILINEAR)
    assert np.array_equal(np.asarray(prepare_image(load_image(raw), spec)), np.asarray(expected))


def test_fraction_crop_and_small_images():
    spec = Preprocessing(input_size=10, crop_mode="fraction", crop_value=0.5)
    image = Image.fromarray(np.arange(40 * 20 * 3, dtype=np.uint32).reshape(20, 40, 3).astype(np.uint8))
    assert prepare_image(image, spec).size == (10, 10)
    big_crop = Preprocessing(input_size=10, crop_mode="pixels", crop_value=500)  # clipped to the image
    assert prepare_image(image, big_crop).size == (10, 10)


def test_batch_and_empty_batch():
    assert preprocess_batch([np.zeros((5, 5), np.uint8)] * 3, SPEC).shape == (3, 3, 16, 16)
    assert preprocess_batch([], SPEC).shape == (0, 3, 16, 16)


def test_real_sample_preprocesses(tmp_path):
    path = sorted((SAMPLES / "test" / "platelet").glob("*.jpg"))[0]
    assert preprocess(path, Preprocessing(input_size=64)).shape == (3, 64, 64)
    assert preprocess(path.read_bytes(), SPEC).shape == (3, 16, 16)


# ---------------------------------------------------------------- bad input


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "cell.jpg"
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(InvalidImageError, match=r"cell\.jpg: not a recognised image"):
        load_image(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "half.jpg"
    path.write_bytes(_jpeg_bytes()[:400])
    with pytest.raises(InvalidImageError, match=r"half\.jpg: cannot decode image \(file is truncated\)"):
        load_image(path)


def test_empty_missing_and_directory(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImageError, match="empty file"):
        load_image(empty)
    with pytest.raises(InvalidImageError, match="empty input"):
        load_image(b"")
    with pytest.raises(InvalidImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InvalidImageError, match="is a directory"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(preprocessing, "MAX_IMAGE_PIXELS", 1000)
    data = _png(Image.new("L", (100, 100)))
    with pytest.raises(InvalidImageError, match="too large"):
        load_image(data, name="bomb.png")
    with pytest.raises(InvalidImageError, match="too large"):
        load_image(np.zeros((100, 100), np.uint8))


def test_real_bomb_header_is_refused():
    """A PNG whose header claims 100k x 100k pixels is refused from the header alone."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    with pytest.raises(InvalidImageError, match="too large"):
        load_image(data)


def test_unsupported_type():
    with pytest.raises(InvalidImageError, match="unsupported input type"):
        load_image([[1, 2], [3, 4]])  # type: ignore[arg-type]
