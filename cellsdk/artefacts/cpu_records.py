"""Was an artefact verified on this CPU class? Its records per class, and what to do when it was not.

int8 and bf16 results depend on the CPU class (:mod:`cellsdk.platform.cpu`): the conversion gate, ``cellsdk
verify`` and the emulated checks record, inside each artefact, the classes it passed or failed on
(``cpu_verification``). :func:`check_artefact` reads those records for the host's class; :func:`enforce` warns
once (:class:`~cellsdk.errors.CpuVerificationWarning`) or refuses (strict mode).

Examples:
    >>> from cellsdk.metadata import ModelMetadata, Preprocessing
    >>> meta = ModelMetadata(labels=("a", "b"), arch="x", preprocessing=Preprocessing(8), precision="fp32")
    >>> check_artefact(meta).status
    'not applicable'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cellsdk.platform import cpu as platform_cpu
from cellsdk.platform.cpu import CPU_CLASSES, HostCpu

__all__ = ["CLASS_SENSITIVE_PRECISIONS", "FAILED", "NOT_APPLICABLE", "UNVERIFIED", "VERIFIED", "CpuCheck",
           "check_artefact", "class_status", "enforce", "verified_classes"]

#: Precisions whose arithmetic depends on the CPU class (integer kernels; bf16, computed in bf16 only where the CPU
#: has it); fp32 / fp16 artefacts are not checked per class.
CLASS_SENSITIVE_PRECISIONS = ("int8", "bf16")
VERIFIED, FAILED, UNVERIFIED, NOT_APPLICABLE = "verified", "failed", "unverified", "not applicable"


@dataclass(frozen=True)
class CpuCheck:
    """Whether an artefact was verified on the CPU class it is about to run on.

    Attributes:
        status: ``verified``, ``failed`` (its verification failed on this class), ``unverified`` (never
            verified on this class) or ``not applicable`` (a float artefact: no class-dependent arithmetic).
        cpu_class: the class checked (the host's, unless another was asked for).
        message: for ``failed`` / ``unverified``, the risk and the fix in one paragraph; else empty.
        records: the artefact's verification records for this class.
    """

    status: str
    cpu_class: str
    message: str = ""
    records: tuple[dict[str, Any], ...] = ()

    @property
    def ok(self) -> bool:
        """True unless the artefact failed, or was never verified, on this class."""
        return self.status in (VERIFIED, NOT_APPLICABLE)


def verified_classes(records: Iterable[dict[str, Any]]) -> list[str]:
    """The CPU classes with a passed record and no failed one, in record order.

    Examples:
        >>> verified_classes([{"cpu_class": "x86-64-avx2", "status": "passed"},
        ...                   {"cpu_class": "x86-64-sse4", "status": "failed"}])
        ['x86-64-avx2']
    """
    records = list(records)
    failed = {r.get("cpu_class") for r in records if r.get("status") == "failed"}
    out: list[str] = []
    for r in records:
        name = r.get("cpu_class")
        if r.get("status") == "passed" and name not in failed and name not in out:
            out.append(str(name))
    return out


def class_status(precision: str, quantization: dict[str, Any] | None, records: Iterable[Any], cpu_class: str) -> str:
    """``verified``, ``failed``, ``unverified`` or ``not applicable`` for an artefact's records on ``cpu_class``.

    Float artefacts, and weight-only quantization (computed in float), are ``not applicable``.

    Examples:
        >>> class_status("int8", {}, [{"cpu_class": "x86-64-avx2", "status": "passed"}], "x86-64-avx2")
        'verified'
        >>> class_status("fp32", None, [], "x86-64-avx2")
        'not applicable'
    """
    if precision not in CLASS_SENSITIVE_PRECISIONS or (quantization or {}).get("weights_only"):
        return NOT_APPLICABLE
    mine = [r for r in records if isinstance(r, dict) and r.get("cpu_class") == cpu_class]
    if any(r.get("status") == "failed" for r in mine):
        return FAILED
    return VERIFIED if any(r.get("status") == "passed" for r in mine) else UNVERIFIED


def check_artefact(metadata: Any, name: str = "this model", host: HostCpu | None = None) -> CpuCheck:
    """Was this artefact (its :class:`~cellsdk.metadata.ModelMetadata`) verified on the host's CPU class?

    Examples:
        >>> from cellsdk.metadata import ModelMetadata, Preprocessing
        >>> meta = ModelMetadata(labels=("a", "b"), arch="x", preprocessing=Preprocessing(8), precision="int8",
        ...                      cpu_verification=({"cpu_class": "x86-64-avx2", "status": "passed"},))
        >>> fake = HostCpu("test CPU", ("avx2",), "x86-64-avx2", "test")
        >>> check_artefact(meta, host=fake).status
        'verified'
        >>> check_artefact(meta, host=HostCpu("test CPU", ("sse4_1",), "x86-64-sse4", "test")).status
        'unverified'
    """
    host = host or platform_cpu.host_cpu()
    cls = host.cpu_class
    status = class_status(metadata.precision, metadata.quantization, metadata.cpu_verification, cls)
    if status == NOT_APPLICABLE:
        return CpuCheck(NOT_APPLICABLE, cls)
    records = tuple(r for r in metadata.cpu_verification if r.get("cpu_class") == cls)
    if status == VERIFIED:
        return CpuCheck(VERIFIED, cls, "", records)
    recipe = metadata.quantization or {}
    if status == FAILED:
        failed = [r for r in records if r.get("status") == "failed"]
        why = "; ".join(dict.fromkeys(str(x) for r in failed for x in (r.get("reasons") or [])[:3])) or "see its manifest"
        return CpuCheck(FAILED, cls, (
            f"{name}: {metadata.precision} verification FAILED on this CPU class {cls} ({host.model}): {why}. Its answers here "
            "are not trustworthy. Re-convert with the portable int8 recipe (cellsdk-convert --int8-recipe "
            "portable) or run a fp32 / fp16 artefact."), records)
    fix = (f"Fix: verify it on this machine with cellsdk verify MODEL --reference CHECKPOINT --data DATA "
           f"(records {cls} in the model), or run a fp32 / fp16 artefact;{_STRICT_HINT}")
    if metadata.precision == "bf16":
        risk = ("bf16 arithmetic runs natively only on CPUs with AVX-512 BF16 or AMX (elsewhere OpenVINO computes "
                "in f32), so its answers differ between classes.")
    elif cls in (recipe.get("unsafe_cpu_classes") or []):
        risk = (f"Its int8 recipe ({recipe.get('recipe')}) uses full 8-bit weights, whose uint8 x int8 sums "
                "saturate on this class (no VNNI): accuracy can drop, whole classes can be lost.")
    elif CPU_CLASSES.get(cls, CPU_CLASSES["other"]).int8_saturates:
        risk = ("This class sums uint8 x int8 products in saturating int16 (no VNNI): an int8 recipe checked "
                "on another CPU can lose accuracy here" + (" (its recipe is portable: 7-bit weights, built "
                                                          "not to saturate)." if recipe.get("saturation_safe")
                                                          else "."))
    else:
        risk = ("Integer kernels differ between CPU classes" + (
            "; its recipe is portable (7-bit weights), so a large difference is unlikely, but nothing measured "
            "it here." if recipe.get("saturation_safe") else ": nothing measured its accuracy here."))
    verified = ", ".join(verified_classes(metadata.cpu_verification)) or "none recorded"
    return CpuCheck(UNVERIFIED, cls, (
        f"{name}: {metadata.precision} artefact never verified on this CPU class {cls} ({host.model}; verified on: "
        f"{verified}). "
        f"{risk} {fix}"), records)


_WARNED: set[tuple[str, str]] = set()
#: the last sentence of an ``unverified`` message; strict mode replaces it by saying it refused
_STRICT_HINT = " strict=True (--strict) refuses to load it."


def enforce(check: CpuCheck, *, strict: bool, key: str, stacklevel: int = 3) -> None:
    """Act on a check: nothing when it is ok; else raise (``strict``) or warn once per artefact and class.

    Raises:
        UnverifiedCpuError: ``strict`` and the artefact failed, or was never verified, on this class.

    Examples:
        >>> enforce(CpuCheck(VERIFIED, "x86-64-avx2"), strict=True, key="m.onnx") is None
        True
    """
    import warnings

    from cellsdk.errors import CpuVerificationWarning, UnverifiedCpuError

    if check.ok:
        return
    if strict:
        raise UnverifiedCpuError(check.message.removesuffix(_STRICT_HINT) + " (refused: strict mode)")
    if (key, check.cpu_class) not in _WARNED:
        _WARNED.add((key, check.cpu_class))
        warnings.warn(check.message, CpuVerificationWarning, stacklevel=stacklevel)
