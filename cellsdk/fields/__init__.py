"""Fields of view: find the white cells, crop them as the classifier's metadata says, count, report (torch-free).

- :mod:`cellsdk.fields.locate`: one box per white cell, from the stain (numpy + Pillow); the field's red cells
  are its ruler;
- :mod:`cellsdk.fields.crops`: each cell cut as the classifier's training crops were, at the training scale;
- :mod:`cellsdk.fields.read`: fields as instruments write them (every page of a TIFF, float TIFFs by range);
- :mod:`cellsdk.fields.count` and :mod:`cellsdk.fields.report`: the differential count, resumable, its summary
  and its HTML report (``cellsdk count``, :func:`cellsdk.count`).

Examples:
    >>> from PIL import Image
    >>> locate_cells(Image.new("RGB", (64, 48), (230, 220, 220)))
    []
"""

from __future__ import annotations

from cellsdk.fields.crops import PBC_RBC_DIAMETER, crop_cell
from cellsdk.fields.locate import CellBox, FieldScale, LocaliserConfig, locate_cells, measure_scale
from cellsdk.fields.read import FieldImage, read_fields

__all__ = ["PBC_RBC_DIAMETER", "CellBox", "FieldImage", "FieldScale", "LocaliserConfig", "crop_cell", "locate_cells",
           "measure_scale", "read_fields"]
