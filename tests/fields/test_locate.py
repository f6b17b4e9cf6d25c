"""The stain-based white-cell localiser (cellsdk.fields.locate) and its numpy morphology."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cellsdk.benchmarks.studies.fields_localiser import compose_field, iou, match, reference_box
from cellsdk.errors import ConfigError
from cellsdk.fields import FieldScale, LocaliserConfig, locate_cells, measure_scale
from cellsdk.fields.morphology import close, dilate, erode, fill_holes, label
from tests.conftest import REPO

PBC_RAW = REPO / "samples" / "pbc_raw"
ORIGINALS = sorted(PBC_RAW.glob("*/*.jpg"))
PBC_RULER = FieldScale(74.0, True)


def _rgb(path):
    return Image.open(path).convert("RGB")


@pytest.mark.parametrize("seed", range(5))
def test_labels_are_the_8_connected_components(seed):
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy is the oracle here")
    mask = np.random.default_rng(seed).random((60, 80)) > 0.55
    labels, count = label(mask)
    expected, expected_count = ndimage.label(mask, structure=np.ones((3, 3)))
    assert count == expected_count
    for index in range(1, count + 1):  # the same partition, whatever the numbering
        assert len(np.unique(expected[labels == index])) == 1
    assert ((labels > 0) == mask).all()


def test_morphology_on_a_square():
    mask = np.zeros((9, 9), bool)
    mask[3:6, 3:6] = True
    assert dilate(mask, 1).sum() == 25 and erode(mask, 1).sum() == 1
    assert (close(mask, 1) == mask).all()
    ring = dilate(mask, 1) & ~mask
    assert fill_holes(ring).sum() == 25


@pytest.mark.parametrize("path", ORIGINALS, ids=[p.stem for p in ORIGINALS])
def test_each_sample_original_has_its_white_cell_found_and_a_platelet_field_none(path):
    image = _rgb(path)
    boxes = locate_cells(image, scale=PBC_RULER)
    if path.parent.name == "platelet":
        assert boxes == []
        return
    assert len(boxes) == 1 and not boxes[0].cut_by_edge
    box = boxes[0]
    assert box.left < image.width / 2 < box.right and box.top < image.height / 2 < box.bottom
    reference = reference_box(image)  # None where the stain segmentation runs into a violet background (BA_127671)
    assert reference is None or iou(box.as_tuple(), reference) >= 0.5


def test_the_ruler_reads_the_same_red_cells_at_any_magnification():
    image = _rgb(PBC_RAW / "neutrophil" / "BNE_275283.jpg")
    full, half = measure_scale(image), measure_scale(image.resize((180, 182)))
    assert full.measured and half.measured
    assert 1.6 < full.rbc_diameter / half.rbc_diameter < 2.4
    boxes, small = locate_cells(image), locate_cells(image.resize((180, 182)))
    assert len(boxes) == len(small) == 1
    scaled = tuple(round(v / 2) for v in boxes[0].as_tuple())
    assert iou(scaled, small[0].as_tuple()) >= 0.6


def test_a_mosaic_field_of_any_size_finds_the_cells_the_tiles_hold():
    tiles = []
    for path in ORIGINALS:
        image = _rgb(path)
        tiles.append((image, None if path.parent.name == "platelet" else reference_box(image)))
    rng = np.random.default_rng(3)
    found = truth = matched = 0
    for size in ((640, 480), (1920, 1080)):
        for _ in range(3):
            field, boxes = compose_field(tiles, size, rng)
            located = [box.as_tuple() for box in locate_cells(field)]
            found, truth, matched = found + len(located), truth + len(boxes), matched + match(located, boxes)
    assert truth > 20
    assert matched / truth >= 0.9 and matched / found >= 0.7


def test_a_cell_cut_by_the_field_edge_is_found_and_marked():
    image = _rgb(PBC_RAW / "lymphocyte" / "LY_118150.jpg")
    box = locate_cells(image, scale=PBC_RULER)[0]
    cut = image.crop((box.left + (box.right - box.left) // 3, 0, image.width, image.height))
    edge = locate_cells(cut, scale=PBC_RULER)
    assert len(edge) == 1 and edge[0].cut_by_edge and edge[0].left == 0


def test_touching_white_cells_are_split():
    field = Image.new("RGB", (400, 300), (235, 225, 215))
    draw = ImageDraw.Draw(field)
    for x in range(0, 400, 45):
        for y in range(0, 300, 45):
            draw.ellipse((x, y, x + 36, y + 36), fill=(215, 150, 160))
    for left in (110, 186):  # two nuclei of 76 px (two red cells each) whose cells touch
        draw.ellipse((left - 6, 94, left + 82, 182), fill=(200, 170, 205))
        draw.ellipse((left, 100, left + 76, 176), fill=(90, 40, 140))
    boxes = locate_cells(field)
    assert len(boxes) == 2


def test_nothing_to_find_is_an_empty_list_not_an_error():
    assert locate_cells(Image.new("RGB", (640, 480), (230, 220, 220))) == []
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    assert isinstance(locate_cells(Image.fromarray(noise)), list)
    assert locate_cells(Image.new("RGB", (1, 1))) == []


@pytest.mark.parametrize("option", [{"work_rbc": 0}, {"rim": -1}, {"min_violet": 300}, {"default_rbc": -5}])
def test_bad_localiser_settings_are_one_line(option):
    with pytest.raises(ConfigError, match="LocaliserConfig"):
        LocaliserConfig(**option)
