"""The out-of-distribution guard a model carries: is this image like the training images, and is the answer sure?

* :mod:`~cellsdk.guard.assessment`: the :class:`Guard` (score, thresholds, input checks) and its one
  :class:`Assessment` per image (``ok``, ``out_of_distribution``, ``uncertain``);
* :mod:`~cellsdk.guard.scores`: the OOD scores on the network's own outputs (MSP, energy, Mahalanobis, kNN),
  fitted once and stored in the model;
* :mod:`~cellsdk.guard.input_checks`: checks on the image itself (magnification, stain, focus, exposure, crop).

Fitting a guard at conversion (thresholds, synthetic shifts) is the toolchain's: :mod:`cellsdk.converters.guard`.

Examples:
    >>> from cellsdk.guard import GUARD_MODES, Guard
    >>> GUARD_MODES
    ('flag', 'reject', 'off')
"""

from __future__ import annotations

from cellsdk.guard.assessment import GUARD_MODES, STATUSES, Assessment, Guard, guard_summary
from cellsdk.guard.input_checks import CHECKS, InputChecks, measure
from cellsdk.guard.scores import SCORES, Score, fit_score, score_from_dict

__all__ = ["CHECKS", "GUARD_MODES", "SCORES", "STATUSES", "Assessment", "Guard", "InputChecks", "Score", "fit_score",
           "guard_summary", "measure", "score_from_dict"]
