"""Whether to trust an artefact here, decided once when it loads: its gate record, its CPU-class records, its
self-check on this machine — and what to do when one says no (warn once, or refuse in strict mode).

The policy, in order:

1. an artefact that failed cellsdk's verification gate warns (:class:`~cellsdk.errors.FailedVerificationWarning`)
   or is refused (``strict``);
2. its self-check runs on a machine key it has no passed record for (:mod:`cellsdk.artefacts.selfcheck`): a
   failure warns (:class:`~cellsdk.errors.SelfCheckWarning`) or is refused, and a CPU class it failed on says so
   too; a pass stands for a verification of this CPU class;
3. otherwise an int8 / bf16 artefact never verified on (or failed on) this CPU class warns
   (:class:`~cellsdk.errors.CpuVerificationWarning`) or is refused.

Examples:
    >>> from cellsdk import Classifier
    >>> trust = establish_trust(Classifier.load(self_check=False), strict=False, self_check=False)
    >>> trust.verification.status, trust.self_check.status
    ('passed', 'off')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cellsdk.artefacts.cpu_records import UNVERIFIED, VERIFIED, CpuCheck, check_artefact, enforce
from cellsdk.artefacts.gate_status import PASSED, Verification, artefact_verification, enforce_verification
from cellsdk.artefacts.selfcheck import OFF, SelfCheck, enforce_self_check
from cellsdk.artefacts.selfcheck import self_check as checked_here

__all__ = ["Trust", "establish_trust", "gate_verification"]


@dataclass(frozen=True)
class Trust:
    """What the checks on load found.

    Attributes:
        verification: the artefact's gate status (:mod:`cellsdk.artefacts.gate_status`).
        cpu_check: whether it was verified on this CPU class (:mod:`cellsdk.artefacts.cpu_records`).
        self_check: its self-check verdict here (``off`` when not run).
    """

    verification: Verification
    cpu_check: CpuCheck
    self_check: SelfCheck


def gate_verification(path: Any, metadata: Any, *, chosen: bool = False) -> Verification:
    """The gate status of the artefact at ``path``: passed for an artefact a folder's manifest chose (a folder only
    picks artefacts its manifest lists as passed), else from its manifest or its own records.

    Examples:
        >>> gate_verification("conv/model.int8.onnx", None, chosen=True).status
        'passed'
    """
    return Verification(PASSED, "manifest") if chosen else artefact_verification(path, metadata)


def establish_trust(model: Any, *, strict: bool, self_check: bool = True,
                    verification: Verification | None = None, stacklevel: int = 4) -> Trust:
    """Run the load-time checks on a loaded model (anything with ``path``, ``metadata``, ``backend``, ``guard`` and
    ``run_outputs``, e.g. a :class:`~cellsdk.Classifier`) and act on them (see the module's doc).

    Args:
        model: the loaded model.
        strict: refuse instead of warning.
        self_check: run (or read the cached verdict of) the artefact's self-check.
        verification: its gate status, when the caller knows it (see :func:`gate_verification`).
        stacklevel: where warnings point (the default: the caller of the caller, i.e. ``Classifier.load``'s).

    Raises:
        FailedVerificationError, SelfCheckError, UnverifiedCpuError: ``strict`` and the check said no.

    Examples:
        >>> from cellsdk import Classifier
        >>> establish_trust(Classifier.load(self_check=False), strict=True).self_check.status
        'passed'
    """
    name = str(model.path)
    verification = verification or gate_verification(model.path, model.metadata)
    enforce_verification(verification, name=name, strict=strict, stacklevel=stacklevel)
    check = check_artefact(model.metadata, model.path.name)
    if not self_check:
        enforce(check, strict=strict, key=name, stacklevel=stacklevel)
        return Trust(verification, check, SelfCheck(OFF))
    verdict = checked_here(model)
    if verdict.failed:
        enforce_self_check(verdict, name=name, strict=strict, stacklevel=stacklevel)
        if check.status != UNVERIFIED:  # a failed gate record says more than the self-check; else it said it
            enforce(check, strict=strict, key=name, stacklevel=stacklevel)
    elif verdict.status == "passed" and check.status == UNVERIFIED:
        check = CpuCheck(VERIFIED, check.cpu_class, "", check.records)
    else:
        enforce(check, strict=strict, key=name, stacklevel=stacklevel)
    return Trust(verification, check, verdict)

