"""Cut a located cell out of its field the way the classifier's training crops were cut.

The classifier's metadata says how its training images were cropped (``Preprocessing.crop_mode`` /
``crop_value``: for the shipped model the centre 200 pixels of a PBC original, where a red cell is
:data:`PBC_RBC_DIAMETER` pixels across). A cell in a field is cut as the same square **in red-cell
diameters** — ``crop_value × field red cell / training red cell`` field pixels, centred on the cell's box — and
resized to ``crop_value`` pixels, so the classifier's own crop keeps all of it and sees the cell at the size it
was trained on, whatever the camera's magnification. Where the square reaches past the field's edge, the
missing part is filled with the field's background colour.

Examples:
    >>> from PIL import Image
    >>> from cellsdk.fields.locate import CellBox
    >>> from cellsdk.metadata import Preprocessing
    >>> spec = Preprocessing(input_size=128, crop_mode="pixels", crop_value=200)
    >>> field = Image.new("RGB", (640, 480), (230, 220, 220))
    >>> crop_cell(field, CellBox(300, 200, 360, 260, 1.0), spec, rbc_diameter=37.0).size
    (200, 200)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from cellsdk.errors import ConfigError
from cellsdk.fields.locate import CellBox
from cellsdk.metadata import Preprocessing

__all__ = ["PBC_RBC_DIAMETER", "background_colour", "crop_cell", "crop_side"]

#: a red cell's diameter in the PBC originals (360 x 363 px, CellaVision DM96), the shipped model's training
#: images, as :func:`cellsdk.fields.locate.red_cell_diameter` measures it: the median over 115 of the 1,600
#: originals (``python -m cellsdk.benchmarks.studies.fields_localiser``)
PBC_RBC_DIAMETER = 74.0


def crop_side(spec: Preprocessing, rbc_diameter: float, training_rbc: float = PBC_RBC_DIAMETER,
              box: CellBox | None = None) -> int:
    """The side, in field pixels, of the square cut around a cell: the training crop, scaled by the ratio of
    the field's red cells to the training images' (never smaller than the cell's box).

    Raises:
        ConfigError: a red-cell diameter that is not positive.

    Examples:
        >>> crop_side(Preprocessing(input_size=128, crop_mode="pixels", crop_value=200), 37.0)
        100
    """
    if not rbc_diameter > 0 or not training_rbc > 0:
        raise ConfigError(f"red-cell diameters must be positive, got {rbc_diameter!r} and {training_rbc!r}")
    base = spec.crop_value if spec.crop_mode == "pixels" else 360 * (spec.crop_value if spec.crop_mode ==
                                                                      "fraction" else 1.0)
    side = base * rbc_diameter / training_rbc
    if box is not None:
        side = max(side, box.right - box.left, box.bottom - box.top)
    return max(8, round(side))


def background_colour(field: Image.Image) -> tuple[int, int, int]:
    """The field's background (the median of its brightest tenth of pixels), to fill past its edge.

    Examples:
        >>> background_colour(Image.new("RGB", (8, 8), (230, 220, 210)))
        (230, 220, 210)
    """
    small = np.asarray(field.reduce(max(1, min(field.size) // 64)), dtype=np.float32).reshape(-1, 3)
    luminance = small @ np.array([0.299, 0.587, 0.114], np.float32)
    bright = small[luminance >= np.percentile(luminance, 90)]
    r, g, b = (round(float(v)) for v in np.median(bright, axis=0))
    return r, g, b


def crop_cell(field: Image.Image, box: CellBox, spec: Preprocessing, *, rbc_diameter: float,
              training_rbc: float = PBC_RBC_DIAMETER, fill: tuple[int, int, int] | None = None) -> Image.Image:
    """The cell in ``box``, cut and resized as the classifier's training crops were (see the module).

    Args:
        field: the field of view (RGB).
        box: the located cell.
        spec: the classifier's preprocessing (its crop says the training crop's size).
        rbc_diameter: a red cell's diameter in this field, in its pixels.
        training_rbc: a red cell's diameter in the classifier's training images.
        fill: the colour past the field's edge (default: the field's background).

    Examples:
        >>> from PIL import Image
        >>> spec = Preprocessing(input_size=64, crop_mode="fraction", crop_value=1.0)
        >>> crop_cell(Image.new("RGB", (100, 80)), CellBox(10, 10, 50, 50, 1.0), spec, rbc_diameter=20.0).size
        (360, 360)
    """
    side = crop_side(spec, rbc_diameter, training_rbc, box)
    cx, cy = (box.left + box.right) / 2, (box.top + box.bottom) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    region = (left, top, left + side, top + side)
    inside = (max(0, left), max(0, top), min(field.width, left + side), min(field.height, top + side))
    if inside == region:
        crop = field.crop(region)
    else:
        crop = Image.new("RGB", (side, side), fill or background_colour(field))
        crop.paste(field.crop(inside), (inside[0] - left, inside[1] - top))
    target = round(spec.crop_value) if spec.crop_mode == "pixels" else 360
    return crop.resize((target, target), Image.Resampling.BILINEAR) if side != target else crop
