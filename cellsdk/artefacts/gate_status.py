"""Whether an artefact passed cellsdk's verification gate: read from its folder's manifest or its own metadata.

``cellsdk-convert`` verifies every artefact against the fp32 reference on held-out images and records the
result twice: in the folder's ``manifest.json`` (``status``, ``reasons``) and inside the artefact (its
``cpu_verification`` records, the ``native`` one being the gate on the converting machine). An artefact
copied out of its folder still knows. Everything that uses an artefact shows this status, warns when it
failed, and refuses it in strict mode.

Examples:
    >>> from types import SimpleNamespace
    >>> meta = SimpleNamespace(cpu_verification=({"target": "native", "status": "failed", "reasons": ["acc -3 pts"]},))
    >>> artefact_verification("model.int8.onnx", meta).status
    'failed'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FAILED", "NOT_VERIFIED", "PASSED", "UNKNOWN", "Verification", "artefact_verification", "enforce_verification",
]

_WARNED: set[str] = set()

PASSED, FAILED, NOT_VERIFIED, UNKNOWN = "passed", "failed", "not verified on this platform", "unknown"


@dataclass(frozen=True)
class Verification:
    """An artefact's verification status.

    Attributes:
        status: ``passed``, ``failed``, ``not verified on this platform`` or ``unknown`` (no record: not a
            cellsdk-convert artefact, or converted without verification).
        source: where it was read: ``manifest``, ``metadata`` or ``none``.
        reasons: why it failed (or was not verified).
    """

    status: str
    source: str = "none"
    reasons: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """True when the gate failed."""
        return self.status == FAILED

    def describe(self) -> str:
        """One phrase, e.g. ``verification passed`` or ``verification FAILED: accuracy -3.1 points``.

        Examples:
            >>> Verification("failed", "manifest", ("accuracy -3.1 points",)).describe()
            'verification FAILED (manifest): accuracy -3.1 points'
        """
        if self.status == FAILED:
            return f"verification FAILED ({self.source}): {'; '.join(self.reasons[:2]) or 'see its manifest'}"
        if self.status == UNKNOWN:
            return "no verification record (not converted by cellsdk-convert, or converted without verification)"
        return f"verification {self.status}"


def artefact_verification(path: str | os.PathLike, metadata: Any) -> Verification:
    """The verification status of the artefact at ``path`` with ``metadata`` (its ModelMetadata, or None).

    The manifest beside the artefact wins (it also knows the gates a file's own metadata cannot record, e.g.
    a failure on an emulated CPU class); else the artefact's own ``native`` records.

    Examples:
        >>> from cellsdk.artefacts.resolve import default_model_path
        >>> from cellsdk.artefacts.info import read_metadata
        >>> artefact_verification(default_model_path(), read_metadata(default_model_path())).describe()
        'verification passed'
    """
    from cellsdk.artefacts.manifest import manifest_entry

    entry = manifest_entry(path)
    if entry is not None and isinstance(entry.get("status"), str):
        reasons = tuple(str(r) for r in entry.get("reasons") or [] if r)
        status = entry["status"] if entry["status"] in (PASSED, FAILED, NOT_VERIFIED) else UNKNOWN
        return Verification(status, "manifest", reasons)
    records = [r for r in (getattr(metadata, "cpu_verification", None) or ()) if isinstance(r, dict)]
    native = [r for r in records if r.get("target") == "native"]
    if not native:
        return Verification(UNKNOWN)
    failed = [r for r in native if r.get("status") == FAILED]
    if failed:
        return Verification(FAILED, "metadata", tuple(str(x) for r in failed for x in (r.get("reasons") or [])))
    return Verification(PASSED if any(r.get("status") == PASSED for r in native) else UNKNOWN, "metadata")


def enforce_verification(verification: Verification, *, name: str, strict: bool, stacklevel: int = 3) -> None:
    """Nothing unless the artefact failed its gate; then raise (``strict``) or warn once per artefact.

    Raises:
        FailedVerificationError: ``strict`` and the artefact failed verification.

    Examples:
        >>> enforce_verification(Verification("failed", "manifest", ("accuracy -3 points",)), name="m.onnx", strict=True)
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cellsdk.errors.FailedVerificationError: m.onnx: verification FAILED (manifest): accuracy -3 points. ...
    """
    import warnings

    from cellsdk.errors import FailedVerificationError, FailedVerificationWarning

    if not verification.failed:
        return
    message = (f"{name}: {verification.describe()}. Its answers may differ from the model it was converted from; "
               "use an artefact that passed (or re-convert)")
    if strict:
        raise FailedVerificationError(f"{message} (refused: strict mode)")
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"{message}; --strict / strict=True refuses it", FailedVerificationWarning,
                      stacklevel=stacklevel)
