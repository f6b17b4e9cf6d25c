"""Find the white cells in a field of view: one box per nucleated cell, from the stain alone (numpy + Pillow).

How (a May-Grünwald-Giemsa / Wright smear; every threshold is relative to the field itself):

1. **The ruler.** Red cells are the field's most common object and about 7.5 µm across in every lab, so the
   field's own red-cell diameter (:func:`red_cell_diameter`: the non-background area over its outline, as
   :func:`cellsdk.normalise.object_size` measures it) sets the scale. The field is worked on at a copy where a
   red cell is :attr:`LocaliserConfig.work_rbc` pixels across, whatever the camera and the magnification.
2. **The nuclei.** A white cell's nucleus is the darkest, most violet thing in the field: blue well above green
   (``B - G``), green well below the red cells'. The threshold is Otsu's cut of ``B - G`` over the field's
   cells, never below :attr:`LocaliserConfig.min_violet`, so a field without a white cell finds nothing.
3. **One cell, one box.** The nuclear mask is closed over gaps narrower than a third of a red cell (the lobes
   of a neutrophil and the granules of a basophil become one object); objects smaller than
   :attr:`LocaliserConfig.min_area` red cells (platelets, debris) are dropped; an object wider than two white
   cells is split at its narrowest point by erosion (touching cells). The box is the nucleus' box grown by the
   cytoplasm rim (:attr:`LocaliserConfig.rim` red-cell diameters per side), at least :attr:`LocaliserConfig.min_side`
   red cells wide.
4. **The field's edge.** A box that the edge cuts is clipped to the field and marked ``cut_by_edge``; such a
   cell is still located and counted (the rule of :mod:`cellsdk.fields.count`).

Examples:
    >>> import numpy as np
    >>> from PIL import Image, ImageDraw
    >>> field = Image.new("RGB", (320, 240), (235, 225, 215))
    >>> draw = ImageDraw.Draw(field)
    >>> for x in range(10, 320, 40):
    ...     for y in range(10, 240, 40):
    ...         draw.ellipse((x, y, x + 30, y + 30), fill=(215, 150, 160))  # red cells, 30 px
    >>> draw.ellipse((140, 100, 190, 150), fill=(190, 160, 200)); draw.ellipse((148, 108, 182, 142), fill=(90, 40, 140))
    >>> [box.as_tuple() for box in locate_cells(field)]
    [(143, 103, 187, 147)]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from cellsdk.errors import ConfigError
from cellsdk.fields.morphology import box_of, close, dilate, erode_diamond, label, open_, otsu_threshold

__all__ = ["PALLOR_CORRECTION", "CellBox", "FieldScale", "LocaliserConfig", "locate_cells", "measure_scale", "red_cell_diameter"]

#: the scale-finding copy's long side, in pixels
_COARSE_SIDE = 640
#: the pale centres of red cells add outline to the non-background mask; this brings the PBC originals' median
#: back to their red cells' outer diameter (74 px measured with the centres filled, 58.7 without)
PALLOR_CORRECTION = 1.26


@dataclass(frozen=True)
class LocaliserConfig:
    """How the stain-based localiser reads a field (sizes are in red-cell diameters, so any magnification works).

    Attributes:
        work_rbc: a red cell's diameter, in pixels, on the copy the localiser works on.
        min_violet: the lowest ``B - G`` (0-255) a nucleus may have: the floor under Otsu's threshold.
        min_area: the smallest nucleus, in red-cell areas (platelets are about 0.1).
        max_green: a nucleus pixel's green, at most this share of the background's (nuclei are dark).
        small_area: nuclei smaller than this (red-cell areas) must also be dark (``small_darkness``).
        small_darkness: the median green (share of the background's) a small nucleus may have: paler small
            objects are platelet clumps.
        split_side: an object wider than this (red-cell diameters) is tried as touching cells ...
        split_area: ... and split where each part is at least this many red-cell areas.
        rim: the cytoplasm around the nucleus, in red-cell diameters per side.
        min_side: the smallest white-cell box side, in red-cell diameters.
        default_rbc: the red-cell diameter (pixels) assumed for a field with too few red cells to measure.
    """

    work_rbc: float = 16.0
    min_violet: float = 40.0
    min_area: float = 0.35
    max_green: float = 0.65
    small_area: float = 0.9
    small_darkness: float = 0.3
    split_side: float = 2.6
    split_area: float = 1.0
    rim: float = 0.1
    min_side: float = 1.1
    default_rbc: float | None = None

    def __post_init__(self) -> None:
        for name in ("work_rbc", "min_area", "min_side"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"LocaliserConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.rim < 0 or not 0 <= self.min_violet < 255:
            raise ConfigError("LocaliserConfig: rim must be >= 0 and min_violet within 0-255")
        if self.default_rbc is not None and not self.default_rbc > 0:
            raise ConfigError(f"LocaliserConfig.default_rbc must be positive, got {self.default_rbc!r}")


@dataclass(frozen=True)
class FieldScale:
    """A field's measured ruler: its red-cell diameter in pixels, and whether it was measured or assumed."""

    rbc_diameter: float
    measured: bool


@dataclass(frozen=True)
class CellBox:
    """One located white cell, in the field's pixels (right / bottom exclusive).

    Attributes:
        left: the box's left edge.
        top: its top edge.
        right: its right edge.
        bottom: its bottom edge.
        score: the nucleus' mean violet (``B - G``) above the field's threshold, a rough confidence.
        cut_by_edge: the cell reaches past the field's edge (the box is clipped to the field).
    """

    left: int
    top: int
    right: int
    bottom: int
    score: float
    cut_by_edge: bool = False

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)``.

        Examples:
            >>> CellBox(1, 2, 30, 40, 5.0).as_tuple()
            (1, 2, 30, 40)
        """
        return self.left, self.top, self.right, self.bottom

    def to_dict(self) -> dict[str, Any]:
        """The box as JSON-ready values.

        Examples:
            >>> CellBox(1, 2, 30, 40, 5.0).to_dict()["right"]
            30
        """
        return asdict(self)


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.float32)


def _shrink(image: Image.Image, factor: float) -> Image.Image:
    if factor >= 1.0:
        return image
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BOX if factor < 0.5 else Image.Resampling.BILINEAR)


def red_cell_diameter(rgb: np.ndarray) -> float:
    """The typical red-cell diameter in ``rgb``'s pixels (0 when too little stands out from the background).

    The non-background mask has area over outline length ``πd / 16`` for discs of diameter ``d``
    (:func:`cellsdk.normalise.object_size`); the red cells' pale centres add outline, so the figure is multiplied
    by :data:`PALLOR_CORRECTION` (fitted on the PBC originals: it makes the median read as the red cells' outer
    diameter there, about 74 px; a field's figure is only ever compared with another's).

    Examples:
        >>> import numpy as np
        >>> field = np.full((200, 200, 3), 230.0, np.float32)
        >>> yy, xx = np.mgrid[:200, :200]
        >>> for cy in range(25, 200, 50):
        ...     for cx in range(25, 200, 50):
        ...         field[np.hypot(yy - cy, xx - cx) < 15] = (210, 150, 160)
        >>> 34 < red_cell_diameter(field) < 42  # 30 px discs with no pale centre: read 1.26 x larger
        True
    """
    luminance = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    background = float(np.percentile(luminance, 95))
    foreground = close(luminance < 0.9 * background, 1)
    if not 0.02 <= foreground.mean() <= 0.7:  # nothing to measure, or red cells packed edge to edge
        return 0.0
    # white cells and platelets (violet) are left out: only the red cells measure the field
    violet = dilate(rgb[..., 2] - rgb[..., 1] > 30.0, 2)
    foreground &= ~violet
    edges = np.count_nonzero((foreground[1:, :] != foreground[:-1, :]) & ~violet[1:, :] & ~violet[:-1, :])
    edges += np.count_nonzero((foreground[:, 1:] != foreground[:, :-1]) & ~violet[:, 1:] & ~violet[:, :-1])
    if foreground.mean() < 0.02:
        return 0.0
    return float(np.count_nonzero(foreground) / max(int(edges), 1)) * 16.0 / math.pi * PALLOR_CORRECTION


def measure_scale(image: Image.Image, config: LocaliserConfig | None = None) -> FieldScale:
    """The field's red-cell diameter in its own pixels (measured on a copy whose long side is 640 pixels).

    Examples:
        >>> from PIL import Image
        >>> measure_scale(Image.new("RGB", (64, 48), (230, 230, 230)), LocaliserConfig(default_rbc=60)).measured
        False
    """
    config = config or LocaliserConfig()
    factor = min(1.0, _COARSE_SIDE / max(image.size))
    diameter = red_cell_diameter(_rgb(_shrink(image, factor))) / factor
    if 0 < diameter * factor < 20 and factor < 1.0:  # small red cells on the copy: measure again, larger
        factor = min(1.0, factor * 24 / (diameter * factor))
        diameter = red_cell_diameter(_rgb(_shrink(image, factor))) / factor
    if diameter >= 4.0 / factor and diameter < min(image.size):
        return FieldScale(diameter, True)
    assumed = config.default_rbc or max(8.0, min(image.size) / 6.0)
    return FieldScale(float(assumed), False)


def _split(component: np.ndarray, min_part: float) -> list[np.ndarray]:
    """Split an object that is two touching cells: erode until it falls apart into cores, give every pixel to the
    nearest core (a watershed in miniature), and keep the split only if every part is at least ``min_part``
    pixels — a neutrophil's lobes fall apart too, but each lobe is smaller than a nucleus."""
    for radius in range(1, 16):
        cores, count = label(erode_diamond(component, radius))
        if count == 0:
            break
        if count > 1:
            ys, xs = np.nonzero(component)
            distances = []
            for index in range(1, count + 1):
                cy, cx = np.nonzero(cores == index)
                points = np.stack([cy, cx], 1)[:: max(1, len(cy) // 64)]
                d = np.min(np.hypot(ys[:, None] - points[None, :, 0], xs[:, None] - points[None, :, 1]), axis=1)
                distances.append(d)
            owner = np.argmin(np.stack(distances), axis=0)
            if np.bincount(owner, minlength=count).min() < min_part:
                return [component]
            parts = []
            for index in range(count):
                part = np.zeros_like(component)
                part[ys[owner == index], xs[owner == index]] = True
                parts.append(part)
            return parts
    return [component]


def locate_cells(image: Image.Image, config: LocaliserConfig | None = None, *,
                 scale: FieldScale | None = None) -> list[CellBox]:
    """One box per white cell (and nucleated red cell) in a field of view, left to right then top to bottom.

    Args:
        image: the field, any size (RGB or anything Pillow converts to it).
        config: the localiser's settings (:class:`LocaliserConfig`).
        scale: the field's ruler, if already measured (:func:`measure_scale`).

    Returns:
        The boxes in the field's pixels, sorted by their top then left edge.

    Examples:
        >>> from PIL import Image
        >>> locate_cells(Image.new("RGB", (120, 90), (230, 220, 220)))  # no cell: nothing found
        []
    """
    config = config or LocaliserConfig()
    scale = scale or measure_scale(image, config)
    factor = min(1.0, config.work_rbc / scale.rbc_diameter)
    work = _rgb(_shrink(image, factor))
    rbc = scale.rbc_diameter * factor  # a red cell's diameter on the work copy
    violet = work[..., 2] - work[..., 1]
    green = work[..., 1]
    background_green = float(np.percentile(green, 95))
    cells = green < 0.9 * background_green
    threshold = max(config.min_violet, otsu_threshold(violet[cells]) if cells.any() else config.min_violet)
    nuclei = (violet > threshold) & (green < config.max_green * background_green)
    nuclei = open_(close(nuclei, max(1, round(rbc / 6))), 1)
    labels, count = label(nuclei)
    stats = box_of(labels, count)
    rbc_area = math.pi * rbc * rbc / 4
    objects: list[np.ndarray] = []
    for index in range(count):
        top, left, bottom, right, area = stats[index]
        if area < config.min_area * rbc_area:
            continue
        component = labels[top:bottom, left:right] == index + 1
        wide = max(bottom - top, right - left) > config.split_side * rbc
        parts = _split(component, config.split_area * rbc_area) if wide else [component]
        for part in parts:
            ys, xs = np.nonzero(part)
            if len(ys) >= config.min_area * rbc_area:
                darkness = float(np.median(green[top + ys, left + xs])) / background_green
                objects.append(np.array([top + ys.min(), left + xs.min(), top + ys.max() + 1, left + xs.max() + 1,
                                         float(violet[top + ys, left + xs].mean() - threshold), len(ys) / rbc_area,
                                         darkness]))
    height, width = image.height, image.width
    work_height, work_width = violet.shape
    boxes = []
    for top, left, bottom, right, score, area_rel, darkness in objects:
        if area_rel < config.small_area and darkness > config.small_darkness:
            continue  # small and pale: a platelet clump, not a nucleus
        rim, side = config.rim * rbc, config.min_side * rbc
        cy, cx = (top + bottom) / 2, (left + right) / 2
        half_h = max((bottom - top) / 2 + rim, side / 2)
        half_w = max((right - left) / 2 + rim, side / 2)
        raw = [(cx - half_w) / factor, (cy - half_h) / factor, (cx + half_w) / factor, (cy + half_h) / factor]
        cut = (raw[0] < -0.5 or raw[1] < -0.5 or raw[2] > width + 0.5 or raw[3] > height + 0.5
               or top == 0 or left == 0 or bottom == work_height or right == work_width)  # the nucleus itself is cut
        boxes.append(CellBox(max(0, round(raw[0])), max(0, round(raw[1])), min(width, round(raw[2])),
                             min(height, round(raw[3])), score=round(float(score), 2), cut_by_edge=bool(cut)))
    return sorted(boxes, key=lambda box: (box.top, box.left))
