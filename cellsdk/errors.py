"""Typed errors raised by cellsdk.

Every error cellsdk raises on bad input derives from :class:`CellSDKError` and
carries a one-line message that names the problem and, where there is one, the
fix. The command-line tools print that line and exit non-zero.

Examples:
    >>> from cellsdk.errors import CellSDKError, InvalidImageError
    >>> try:
    ...     raise InvalidImageError("cell.png: not an image (cannot identify format)")
    ... except CellSDKError as err:
    ...     print(err)
    cell.png: not an image (cannot identify format)
"""

from __future__ import annotations

__all__ = [
    "BackendNotInstalledError",
    "CellSDKError",
    "CheckpointError",
    "ConfigError",
    "CpuVerificationWarning",
    "DatasetError",
    "DeviceUnavailableError",
    "ExplanationUnavailableError",
    "FailedVerificationError",
    "FailedVerificationWarning",
    "InvalidImageError",
    "MetadataError",
    "ModelNotFoundError",
    "ParityError",
    "PlatformNotSupportedError",
    "SelfCheckError",
    "SelfCheckWarning",
    "TrainingError",
    "UnsupportedFormatError",
    "UnverifiedCpuError",
    "describe_os_error",
]


def describe_os_error(err: OSError) -> str:
    """An OS error as one line naming the file, e.g. ``model.onnx: Permission denied``.

    Examples:
        >>> describe_os_error(FileNotFoundError(2, "No such file or directory", "m.onnx"))
        'm.onnx: No such file or directory'
    """
    where = f"{err.filename}: " if getattr(err, "filename", None) else ""
    return f"{where}{err.strerror or err}"


class CellSDKError(Exception):
    """Base class of every error cellsdk raises on purpose."""


class UnsupportedFormatError(CellSDKError):
    """A file or format that cellsdk does not know how to handle."""


class ModelNotFoundError(CellSDKError, FileNotFoundError):
    """The model file or folder does not exist."""


class PlatformNotSupportedError(CellSDKError):
    """The model's runtime cannot run on this platform (e.g. CoreML off macOS)."""


class BackendNotInstalledError(CellSDKError, ImportError):
    """An optional package needed for this operation is not installed."""


class MetadataError(CellSDKError):
    """Model metadata is missing, malformed or inconsistent."""


class InvalidImageError(CellSDKError):
    """An image cannot be decoded, is empty, truncated or absurdly large."""


class DatasetError(CellSDKError):
    """A dataset is missing, malformed or inconsistent."""


class CheckpointError(CellSDKError):
    """A file is not a cellsdk checkpoint, or is corrupt."""


class ConfigError(CellSDKError, ValueError):
    """An option or configuration value is out of range or inconsistent."""


class DeviceUnavailableError(ConfigError):
    """A device was asked for (``cuda``, ``tensorrt``, ``mps`` …) that this machine, its driver or its packages
    cannot provide; the message names what to install (see ``cellsdk devices``)."""


class ExplanationUnavailableError(CellSDKError):
    """The model cannot explain its predictions in this runtime (no class-activation-map output)."""


class TrainingError(CellSDKError):
    """Training cannot start or continue (e.g. a diverging loss)."""


class ParityError(CellSDKError):
    """A converted model disagrees with its fp32 reference beyond the thresholds."""


class UnverifiedCpuError(CellSDKError):
    """An int8 artefact loaded in strict mode on a CPU class it was not verified on (or failed on)."""


class CpuVerificationWarning(UserWarning):
    """An int8 artefact runs on a CPU class it was not verified on (or failed on)."""


class FailedVerificationError(CellSDKError):
    """An artefact that failed cellsdk's verification gate, loaded in strict mode."""


class FailedVerificationWarning(CpuVerificationWarning):
    """An artefact that failed cellsdk's verification gate is being used (strict mode refuses it)."""


class SelfCheckError(CellSDKError):
    """An artefact that failed its self-check on this machine (its embedded test vectors), loaded in strict mode."""


class SelfCheckWarning(CpuVerificationWarning):
    """An artefact failed its self-check on this machine and is being used (strict mode refuses it)."""
