"""Binary morphology and connected components in numpy alone (the runtime has no scipy or scikit-image).

The localiser works on a small copy of the field (a red cell about 16 pixels across), so these simple
implementations — shifted maxima for dilation, label propagation with pointer jumping for components — cost
a few milliseconds per field.

Examples:
    >>> import numpy as np
    >>> mask = np.zeros((6, 8), bool); mask[1:3, 1:3] = True; mask[4, 5:8] = True
    >>> labels, count = label(mask)
    >>> count, sorted(np.bincount(labels.ravel())[1:].tolist())
    (2, [3, 4])
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_of", "close", "dilate", "erode", "erode_diamond", "fill_holes", "label", "open_", "otsu_threshold"]


def _shift_max(mask: np.ndarray, radius: int, axis: int) -> np.ndarray:
    out = mask.copy()
    for step in range(1, radius + 1):
        if axis == 0:
            out[step:] |= mask[:-step]
            out[:-step] |= mask[step:]
        else:
            out[:, step:] |= mask[:, :-step]
            out[:, :-step] |= mask[:, step:]
    return out


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate a boolean mask with a (2 ``radius`` + 1)-pixel square.

    Examples:
        >>> import numpy as np
        >>> mask = np.zeros((5, 5), bool); mask[2, 2] = True
        >>> int(dilate(mask, 1).sum())
        9
    """
    if radius <= 0:
        return mask.copy()
    return _shift_max(_shift_max(mask, radius, 0), radius, 1)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erode a boolean mask with a (2 ``radius`` + 1)-pixel square (outside the image counts as set).

    Examples:
        >>> import numpy as np
        >>> mask = np.zeros((5, 5), bool); mask[1:4, 1:4] = True
        >>> int(erode(mask, 1).sum())
        1
    """
    return ~dilate(~mask, radius)


def erode_diamond(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erode with a diamond of ``radius`` (4-neighbour steps): rounder than the square, so a disc outlives a
    neck of the same width.

    Examples:
        >>> import numpy as np
        >>> mask = np.zeros((7, 7), bool); mask[1:6, 1:6] = True
        >>> int(erode_diamond(mask, 2).sum())
        1
    """
    out = mask.copy()
    for _ in range(radius):
        shrunk = out.copy()
        shrunk[1:] &= out[:-1]
        shrunk[:-1] &= out[1:]
        shrunk[:, 1:] &= out[:, :-1]
        shrunk[:, :-1] &= out[:, 1:]
        out = shrunk
    return out


def close(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate then erode: fills gaps narrower than about 2 ``radius`` pixels.

    Examples:
        >>> import numpy as np
        >>> mask = np.zeros((5, 7), bool); mask[1:4, 1:3] = True; mask[1:4, 4:6] = True
        >>> bool(close(mask, 1)[2, 3])
        True
    """
    padded = np.pad(mask, radius)
    closed = erode(dilate(padded, radius), radius)
    return closed[radius:-radius, radius:-radius] if radius > 0 else closed


def open_(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erode then dilate: removes specks narrower than about 2 ``radius`` + 1 pixels.

    Examples:
        >>> import numpy as np
        >>> mask = np.zeros((7, 7), bool); mask[1:6, 1:6] = True; mask[0, 0] = True
        >>> bool(open_(mask, 1)[0, 0]), bool(open_(mask, 1)[3, 3])
        (False, True)
    """
    return dilate(erode(mask, radius), radius)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's runs of set pixels: ``(row, start, stop)`` arrays, in raster order."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), np.int8)
    padded[:, 1:-1] = mask
    change = np.diff(padded, axis=1)
    rows, starts = np.nonzero(change == 1)
    _, stops = np.nonzero(change == -1)
    return rows, starts, stops


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 8-connected components of a boolean mask: ``(labels, count)``, 0 for the background and
    1 … count in raster order of each component's first pixel.

    Runs of set pixels are joined with the runs they touch in the row above (a union-find over runs, so the
    cost follows the number of runs, not the size of the components).

    Examples:
        >>> import numpy as np
        >>> labels, count = label(np.eye(4, dtype=bool))  # diagonal neighbours are connected
        >>> count
        1
    """
    rows, starts, stops = _runs(np.asarray(mask, bool))
    labels = np.zeros(mask.shape, np.int32)
    if len(rows) == 0:
        return labels, 0
    # the runs of the row above that each run touches, by binary search on (row, column) keys: [first, last)
    key = mask.shape[1] + 2
    first = np.searchsorted(rows * key + stops, (rows - 1) * key + starts, side="left")
    last = np.searchsorted(rows * key + starts, (rows - 1) * key + stops, side="right")
    counts = np.maximum(last - first, 0)
    upper = np.repeat(first, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    lower = np.repeat(np.arange(len(rows)), counts)
    roots = np.arange(len(rows))
    while True:  # the smallest run index of each component: propagate along the links, then jump
        joined = np.minimum(roots[upper], roots[lower])
        updated = roots.copy()
        np.minimum.at(updated, upper, joined)
        np.minimum.at(updated, lower, joined)
        updated = updated[updated]
        updated = updated[updated]
        if np.array_equal(updated, roots):
            break
        roots = updated
    _, numbers = np.unique(roots, return_inverse=True)
    lengths = stops - starts
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    labels[np.repeat(rows, lengths), np.repeat(starts, lengths) + offsets] = np.repeat(numbers + 1, lengths)
    return labels, int(numbers.max()) + 1


def box_of(labels: np.ndarray, count: int) -> np.ndarray:
    """Per component ``1 … count``: ``[top, left, bottom, right, area]`` (bottom / right exclusive).

    Examples:
        >>> import numpy as np
        >>> labels = np.zeros((4, 5), np.int32); labels[1:3, 2:5] = 1
        >>> box_of(labels, 1).tolist()
        [[1, 2, 3, 5, 6]]
    """
    out = np.zeros((count, 5), np.int64)
    if count == 0:
        return out
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs] - 1
    out[:, 0] = np.iinfo(np.int64).max
    out[:, 1] = np.iinfo(np.int64).max
    np.minimum.at(out[:, 0], ids, ys)
    np.minimum.at(out[:, 1], ids, xs)
    np.maximum.at(out[:, 2], ids, ys + 1)
    np.maximum.at(out[:, 3], ids, xs + 1)
    out[:, 4] = np.bincount(ids, minlength=count)
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill every unset region that does not reach the mask's border.

    Examples:
        >>> import numpy as np
        >>> ring = np.ones((5, 5), bool); ring[2, 2] = False
        >>> bool(fill_holes(ring)[2, 2])
        True
    """
    gaps, count = label(~mask)
    if count == 0:
        return mask.copy()
    border = np.unique(np.concatenate([gaps[0], gaps[-1], gaps[:, 0], gaps[:, -1]]))
    return mask | (~np.isin(gaps, border) & (gaps > 0))


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of a 1-D sample: the cut that best separates it into two groups.

    Examples:
        >>> import numpy as np
        >>> 10 < otsu_threshold(np.r_[np.full(50, 10.0), np.full(50, 90.0)]) < 90
        True
    """
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else 0.0
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    total = weight[-1]
    mean = np.cumsum(hist * centres)
    between = (mean[-1] * weight - mean * total) ** 2 / np.maximum(weight * (total - weight), 1e-12)
    return float(edges[int(np.argmax(between[:-1])) + 1])
