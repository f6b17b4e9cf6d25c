"""Scale and stain normalisation: what the runtime does to another lab's image before the model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cellsdk.errors import ConfigError, MetadataError
from cellsdk.metadata import ModelMetadata, Preprocessing
from cellsdk.normalise import (
    cell_size,
    lab_to_rgb,
    normalise_stain,
    rescale_for,
    rgb_to_lab,
    scale_factor,
    stain_reference,
)
from cellsdk.preprocessing import prepare_image, preprocess


def _cells(side: int = 240, radius: int = 30, colour=(120, 60, 160)) -> Image.Image:
    """A bright field with a few stained discs of ``radius``."""
    canvas = Image.new("RGB", (side, side), (235, 222, 228))
    draw = ImageDraw.Draw(canvas)
    for cx, cy in ((side // 2, side // 2), (side // 5, side // 5), (4 * side // 5, side // 4)):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    return canvas


def test_cell_size_follows_the_magnification():
    base = cell_size(_cells(240, 20))
    assert cell_size(_cells(480, 40)) == pytest.approx(2 * base, rel=0.15)
    assert cell_size(_cells(240, 40)) == pytest.approx(2 * base, rel=0.15)


def test_cell_size_of_an_empty_field_is_zero():
    assert cell_size(Image.new("RGB", (100, 100), "white")) == 0.0


def test_an_image_inside_the_training_range_is_left_exactly_as_it_is():
    image = _cells(240, 20)
    size = cell_size(image)
    spec = Preprocessing(32, "pixels", 200)
    scaled = Preprocessing(32, "pixels", 200, scale_range=(size * 0.5, size * 2))
    assert scale_factor(image, scaled.scale_range, crop=200) == 1.0
    assert np.array_equal(np.asarray(prepare_image(image, spec)), np.asarray(prepare_image(image, scaled)))


def test_an_image_at_twice_the_magnification_is_brought_back_into_range():
    small = _cells(240, 20)
    size = cell_size(small, crop=200)
    large = small.resize((480, 480), Image.Resampling.BILINEAR)
    factor = scale_factor(large, (size * 0.9, size * 1.1), crop=200)
    assert 0.4 < factor < 0.6
    assert scale_factor(small.resize((120, 120)), (size * 0.9, size * 1.1), crop=200) > 1.6


def test_a_known_pixel_size_rescales_by_the_ratio_and_needs_the_training_one():
    image = _cells()
    assert scale_factor(image, None, pixel_size=0.2, training_pixel_size=0.1) == 2.0
    with pytest.raises(ConfigError, match=r"does not record its training images' pixel size"):
        scale_factor(image, None, pixel_size=0.2)
    with pytest.raises(ConfigError, match="not a positive number"):
        scale_factor(image, None, pixel_size=-1, training_pixel_size=0.1)


def test_a_shrunk_image_is_padded_with_its_background_to_the_crop():
    out = rescale_for(_cells(240, 20), 0.5, crop=200)
    assert out.size == (200, 200)
    assert np.abs(np.asarray(out)[0, 0].astype(int) - (235, 222, 228)).max() <= 2


def test_lab_round_trip_and_reinhard_moves_the_colours_to_the_reference():
    rng = np.random.default_rng(0)
    pixels = rng.integers(30, 225, (16, 16, 3), dtype=np.uint8)
    assert np.abs(lab_to_rgb(rgb_to_lab(pixels)).astype(int) - pixels).max() <= 1
    yellow = np.asarray(_cells(64, 10, (150, 90, 60)).convert("RGB"))
    yellow = np.clip(yellow.astype(int) + np.array([10, 10, -40]), 0, 255).astype(np.uint8)
    reference = stain_reference([np.asarray(_cells(64, 10))])
    out = normalise_stain(yellow, reference)
    before = np.linalg.norm(rgb_to_lab(yellow).reshape(-1, 3).mean(0) - reference["mean"])
    after = np.linalg.norm(rgb_to_lab(out).reshape(-1, 3).mean(0) - reference["mean"])
    assert after < before / 4  # (not exact: RGB clips the most saturated pixels)


def test_unknown_stain_methods_and_bad_references_are_refused():
    with pytest.raises(ConfigError, match="unknown"):
        normalise_stain(np.zeros((2, 2, 3), np.uint8), {"method": "macenko", "mean": [0, 0, 0], "std": [1, 1, 1]})
    with pytest.raises(MetadataError, match=r"preprocessing\.stain"):
        Preprocessing(32, stain={"method": "reinhard", "mean": [0, 0], "std": [1, 1, 1]})
    with pytest.raises(MetadataError, match="scale_range"):
        Preprocessing(32, scale_range=(5, 1))
    with pytest.raises(MetadataError, match="pixel_size_um"):
        Preprocessing(32, pixel_size_um=0)


def test_the_new_steps_travel_in_the_metadata_and_old_documents_do_not_change():
    plain = Preprocessing(32, "pixels", 200)
    assert set(plain.to_dict()) == {"input_size", "crop_mode", "crop_value", "resize_filter", "mean", "std",
                                    "color_order"}
    spec = Preprocessing(32, "pixels", 200, scale_range=(9.5, 20.0), pixel_size_um=0.1,
                         stain={"method": "reinhard", "mean": [70.0, 10.0, -8.0], "std": [12.0, 6.0, 5.0]})
    meta = ModelMetadata(labels=("a", "b"), arch="x", preprocessing=spec)
    again = ModelMetadata.from_json(meta.to_json())
    assert again.preprocessing == spec
    assert "Reinhard" in spec.describe() and "scale cells" in spec.describe()
    assert spec.without_crop().scale_range is None and spec.without_crop().stain == spec.stain


def test_stain_normalisation_is_part_of_preprocess():
    spec = Preprocessing(16, stain={"method": "reinhard", "mean": [60.0, 20.0, -20.0], "std": [5.0, 5.0, 5.0]})
    plain = Preprocessing(16)
    image = _cells(64, 10)
    assert not np.allclose(preprocess(image, spec), preprocess(image, plain))
