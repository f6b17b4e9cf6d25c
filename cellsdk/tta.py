"""Test-time augmentation: the eight flips and right-angle rotations of a model input, averaged in one run.

Blood cells on a slide have no orientation, so a classifier should give the same answer for every element of
the dihedral group D4 (4 rotations x with / without a mirror). ``dihedral`` TTA runs all eight views of each
image in the same batched runtime call and averages their class probabilities. The views are taken on the
preprocessed square input (after the crop and resize, which commute with them for a centred square crop), so
an image is decoded once.

Examples:
    >>> batch = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    >>> expand(batch, "dihedral").shape, views("dihedral"), views("none")
    ((16, 3, 4, 4), 8, 1)
    >>> merge(np.ones((16, 5)), "dihedral").shape
    (2, 5)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellsdk.errors import ConfigError

__all__ = ["TTA_MODES", "AugmentedViews", "check_mode", "expand", "first_view", "merge", "tta_views", "unview", "views"]

#: ``none``: the image as it is; ``dihedral``: the mean over its 8 flips / right-angle rotations.
TTA_MODES = ("none", "dihedral")


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`TTA_MODES`; else one :class:`ConfigError` line.

    Examples:
        >>> check_mode("dihedral")
        'dihedral'
    """
    if mode not in TTA_MODES:
        raise ConfigError(f"tta={mode!r}: use one of {', '.join(TTA_MODES)}")
    return mode


def views(mode: str) -> int:
    """How many views of each image ``mode`` runs.

    Examples:
        >>> views("none"), views("dihedral")
        (1, 8)
    """
    return 8 if check_mode(mode) == "dihedral" else 1


def _dihedral(batch: np.ndarray) -> list[np.ndarray]:
    """The 8 D4 images of an ``N x C x H x W`` batch, identity first: rotations by 0/90/180/270 degrees, then the
    same of its mirror image."""
    mirrored = batch[..., ::-1]
    return [np.rot90(source, k, axes=(2, 3)) for source in (batch, mirrored) for k in range(4)]


def expand(batch: np.ndarray, mode: str) -> np.ndarray:
    """``batch`` (``N x C x H x W``) with every image followed by its other views: ``(N * views) x C x H x W``.

    Raises:
        ConfigError: an unknown mode, or a non-square input under ``dihedral``.

    Examples:
        >>> expand(np.zeros((2, 3, 4, 4), np.float32), "dihedral").shape
        (16, 3, 4, 4)
    """
    if views(mode) == 1:
        return batch
    if batch.ndim != 4 or batch.shape[2] != batch.shape[3]:
        raise ConfigError(f"tta='dihedral' needs square N x C x H x W inputs, got shape {tuple(batch.shape)}")
    stacked = np.stack(_dihedral(batch), axis=1)  # N x 8 x C x H x W
    return np.ascontiguousarray(stacked.reshape(-1, *batch.shape[1:]))


def merge(values: np.ndarray, mode: str) -> np.ndarray:
    """The mean over each image's views of per-view ``values`` (e.g. probabilities), back to one row per image.

    Examples:
        >>> merge(np.arange(16.0).reshape(16, 1), "dihedral").ravel().tolist()
        [3.5, 11.5]
    """
    count = views(mode)
    if count == 1:
        return values
    return values.reshape(-1, count, *values.shape[1:]).mean(axis=1)


def first_view(values: np.ndarray, mode: str) -> np.ndarray:
    """Each image's own (untransformed) row of per-view ``values``.

    Examples:
        >>> first_view(np.arange(16), "dihedral").tolist()
        [0, 8]
    """
    return values[::views(mode)]


def unview(maps: np.ndarray, mode: str) -> np.ndarray:
    """The mean over each image's views of per-view spatial ``maps`` (``(N * views) x C x h x w``, e.g. class
    activation maps), each first turned back to the image's own orientation: ``N x C x h x w``.

    Examples:
        >>> x = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
        >>> bool(np.allclose(unview(expand(x, "dihedral"), "dihedral"), x))
        True
    """
    count = views(mode)
    if count == 1:
        return maps
    grouped = maps.reshape(-1, count, *maps.shape[1:])
    restored = []
    for j in range(count):  # view j = rot90(mirror^(j // 4)(x), j % 4): undo the rotation, then the mirror
        view = np.rot90(grouped[:, j], -(j % 4), axes=(2, 3))
        restored.append(view[..., ::-1] if j >= 4 else view)
    return np.mean(restored, axis=0)


@dataclass(frozen=True)
class AugmentedViews:
    """A mode's views as :class:`cellsdk.inference.Views`: what a run expands each image into and merges back.

    Examples:
        >>> views = tta_views("dihedral")
        >>> views.expand(np.zeros((2, 3, 4, 4), np.float32)).shape, views.merge(np.ones((16, 5))).shape
        ((16, 3, 4, 4), (2, 5))
    """

    mode: str


    def expand(self, batch: np.ndarray) -> np.ndarray:
        """See :func:`expand`.

        Examples:
            >>> tta_views("dihedral").expand(np.zeros((1, 3, 2, 2))).shape
            (8, 3, 2, 2)
        """
        return expand(batch, self.mode)

    def merge(self, values: np.ndarray) -> np.ndarray:
        """See :func:`merge`.

        Examples:
            >>> tta_views("dihedral").merge(np.ones((8, 3))).shape
            (1, 3)
        """
        return merge(values, self.mode)

    def first(self, values: np.ndarray) -> np.ndarray:
        """See :func:`first_view`.

        Examples:
            >>> tta_views("dihedral").first(np.arange(16)).tolist()
            [0, 8]
        """
        return first_view(values, self.mode)

    def unview(self, maps: np.ndarray) -> np.ndarray:
        """See :func:`unview`.

        Examples:
            >>> x = np.arange(4.0).reshape(1, 1, 2, 2)
            >>> bool(np.allclose(tta_views("dihedral").unview(expand(x, "dihedral")), x))
            True
        """
        return unview(maps, self.mode)


def tta_views(mode: str) -> AugmentedViews:
    """The views of ``mode`` for :meth:`cellsdk.inference.Inference.run`.

    Raises:
        ConfigError: an unknown mode.

    Examples:
        >>> tta_views("none").merge(np.ones((3, 2))).shape
        (3, 2)
    """
    return AugmentedViews(check_mode(mode))
