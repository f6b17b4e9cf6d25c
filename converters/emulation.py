"""Run an artefact under an emulated CPU: ``qemu-x86_64 -cpu MODEL`` for x86-64 classes, ``qemu-aarch64`` with an
aarch64 Python environment for ARM64 ones (what :mod:`cellsdk.converters.targets` verifies on).

Each run is a worker process (``python -m cellsdk.batch.worker``, torch-free) under the emulator: on preprocessed
arrays (:func:`run_emulated`) or on the artefact's own test vectors (:func:`self_check_emulated`). For ARM64 it
runs Debian's arm64 Python with PyPI's aarch64 wheels (the environment ``scripts/setup.sh`` builds, see
:func:`arm64_environment`) in a private mount namespace whose ``/proc/cpuinfo`` describes the emulated CPU (needs
root and ``unshare``): QEMU shows the host's, and ONNX Runtime's CPU detection then crashes.

Examples:
    >>> emulator_name("haswell"), EMULATED["haswell"][1]
    ('qemu-x86_64', 'x86-64-avx2')
    >>> cannot_emulate("haswell") is None or "qemu" in cannot_emulate("haswell")
    True
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cellsdk._io import on_terminate
from cellsdk.artefacts.manifest import STATUS_FAILED, STATUS_NOT_VERIFIED
from cellsdk.errors import ConfigError

__all__ = ["ARM64_ENV_HINT", "ARM64_TARGETS", "EMULATED", "QEMU_INSTALL", "arm64_environment", "cannot_emulate",
           "cannot_run_there",
           "emulator_name", "qemu_binary", "run_emulated", "self_check_emulated"]

#: Emulated CPU classes by the name --verify-cpus takes: the QEMU model, the class it stands for, what it is.
EMULATED = {
    "haswell": ("Haswell", "x86-64-avx2", "AVX2 + FMA, no VNNI (int8 sums saturate)"),
    "nehalem": ("Nehalem", "x86-64-sse4", "SSE4.2, no AVX"),
    "skylake-client": ("Skylake-Client", "x86-64-avx2", "AVX2 + FMA, no VNNI, no AVX-512"),
    "sandybridge": ("SandyBridge", "x86-64-sse4", "AVX without AVX2"),
    "westmere": ("Westmere", "x86-64-sse4", "SSE4.2, AES"),
    "cortex-a72": ("cortex-a72", "arm64-neon", "ARM64 NEON without dot product (Raspberry Pi 4 class)"),
    "neoverse-n1": ("neoverse-n1", "arm64-dotprod", "ARM64 with the int8 dot product (Graviton2 / Jetson Orin class)"),
    "arm64-max": ("max", "arm64-i8mm", "QEMU's ARM64 'max': every feature it emulates, I8MM and BF16 among them"),
}
#: The targets emulated as 64-bit ARM (by ``qemu-aarch64`` in the aarch64 environment ``scripts/setup.sh`` builds)
ARM64_TARGETS = ("cortex-a72", "neoverse-n1", "arm64-max")
QEMU_INSTALL = "install QEMU user-mode emulation: apt-get install qemu-user (Debian / Ubuntu) or dnf install qemu-user"
ARM64_ENV_HINT = "scripts/setup.sh builds it as root with apt-get (scripts/arm64_env.sh)"
#: what each emulated ARM CPU shows in /proc/cpuinfo (QEMU shows the host's, and ONNX Runtime's CPU detection
#: then crashes): the Features line the kernel would print for it, and its part number
_ARM_CPUINFO = {
    "cortex-a72": ("fp asimd evtstrm crc32 cpuid", "0xd08"),
    "neoverse-n1": ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                    "asimddp ssbs", "0xd0c"),
    "arm64-max": ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
                  "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp "
                  "sve2 i8mm bf16", "0xd0c"),
}
# QEMU warns once per thread about host-only CPUID bits it cannot emulate; they do not affect user code
_QEMU_NOISE = "TCG doesn't support requested feature"


def qemu_binary() -> str | None:
    """The ``qemu-x86_64`` executable, or None.

    Examples:
        >>> qemu_binary() is None or qemu_binary().endswith("qemu-x86_64")
        True
    """
    return shutil.which("qemu-x86_64")


def emulator_name(target: str) -> str:
    """The QEMU user-mode emulator that runs ``target``.

    Examples:
        >>> emulator_name("haswell"), emulator_name("neoverse-n1")
        ('qemu-x86_64', 'qemu-aarch64')
    """
    return "qemu-aarch64" if target in ARM64_TARGETS else "qemu-x86_64"


def arm64_environment() -> tuple[Path, Path] | None:
    """The aarch64 sysroot (Debian's arm64 Python) and site folder (aarch64 wheels) ``scripts/setup.sh`` built.

    ``$CELLSDK_ARM64_ENV`` names another folder; the default is ``opt/arm64`` under this Python's prefix (the venv).

    Examples:
        >>> environment = arm64_environment()
        >>> environment is None or len(environment) == 2
        True
    """
    root = Path(os.environ.get("CELLSDK_ARM64_ENV") or Path(sys.prefix) / "opt" / "arm64")
    sysroot, site = root / "sysroot", root / "site"
    if (sysroot / "usr" / "bin" / "python3.11").is_file() and (site / "onnxruntime").is_dir():
        return sysroot, site
    return None


def cannot_emulate(target: str) -> str | None:
    """Why ``target`` cannot be emulated here (None when it can).

    Examples:
        >>> problem = cannot_emulate("cortex-a72")
        >>> problem is None or "aarch64" in problem or "ARM64" in problem
        True
    """
    if target in ARM64_TARGETS:
        if not sys.platform.startswith("linux"):
            return f"emulating ARM64 CPU classes needs Linux (this is {sys.platform})"
        if shutil.which("qemu-aarch64") is None:
            return f"qemu-aarch64 is not installed: {QEMU_INSTALL}"
        if arm64_environment() is None:
            return f"no aarch64 Python environment for qemu-aarch64: {ARM64_ENV_HINT}"
        if shutil.which("unshare") is None or os.geteuid() != 0:
            return ("emulating ARM64 needs root and unshare (a private /proc/cpuinfo for the emulated CPU): run as "
                    "root, or verify on an ARM64 machine natively")
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"emulating x86-64 CPU classes needs an x86-64 host (this is {platform.machine()})"
    if qemu_binary() is None:
        return f"qemu-x86_64 is not installed: {QEMU_INSTALL}"
    return None


def cannot_run_there(target: str, model: Path) -> str | None:
    """Why ``model`` cannot run under the emulated ``target`` here: :func:`cannot_emulate`, or (ARM64) the aarch64
    environment lacks its runtime (None when it can).

    PyPI has ONNX Runtime and LiteRT (``ai-edge-litert`` 1.4, the newest with Linux aarch64 wheels) for aarch64
    Linux; ExecuTorch's Python runtime needs torch, which the environment does not carry.

    Examples:
        >>> problem = cannot_run_there("cortex-a72", Path("model.int8.pte"))
        >>> problem is not None and ("executorch" in problem or "aarch64" in problem or "ARM64" in problem)
        True
    """
    problem = cannot_emulate(target)
    if problem or target not in ARM64_TARGETS:
        return problem
    from cellsdk.backends import backend_for_path

    try:
        backend = backend_for_path(model)
    except Exception:  # noqa: BLE001 - an unknown suffix fails later, in the worker, with its own message
        return None
    environment = arm64_environment()
    if environment is not None and not (environment[1] / backend.package).is_dir():
        return (f"the aarch64 environment has no {backend.package} (the {backend.name} runtime): "
                "verify this artefact on an ARM64 machine natively")
    return None


def run_emulated(model: Path, options: dict[str, Any], target: str, arrays: Path, out: Path,
                 timeout: float = 3600.0) -> str | None:
    """Run ``model`` on the preprocessed ``arrays`` (``.npy``) under the emulated CPU ``target``.

    Writes ``out`` (``.npz``: ``logits`` and ``info``, the CPU class and features the worker saw).
    Returns None on success, else a one-line reason.

    Examples:
        >>> run_emulated(Path("model.int8.onnx"), {}, "haswell", Path("images.npy"), Path("out.npz"))  # doctest: +SKIP
    """
    return cannot_run_there(target, model) or _run_worker(
        target, [str(model), str(arrays), str(out), "--options", json.dumps(options)], out, timeout)


def self_check_emulated(model: Path, target: str, options: dict[str, Any] | None = None,
                        timeout: float = 3600.0) -> dict[str, Any]:
    """``model``'s self-check (its own test vectors, decoding included) under the emulated CPU ``target``.

    Returns:
        The verdict (:meth:`cellsdk.artefacts.selfcheck.SelfCheck.to_dict`), with ``target`` and ``method``; when it could
        not run, ``status`` ``not verified on this platform`` (nothing to emulate with) or ``failed`` (the worker
        failed) and the reason.

    Examples:
        >>> self_check_emulated(Path("model.int8.onnx"), "haswell")["status"]  # doctest: +SKIP
        'passed'
    """
    base = {"target": target, "method": f"{emulator_name(target)} -cpu {EMULATED[target][0]}"}
    problem = cannot_run_there(target, model)
    if problem:
        return {**base, "status": STATUS_NOT_VERIFIED, "reasons": [problem]}
    with tempfile.TemporaryDirectory(prefix="cellsdk-selfcheck-") as tmp:
        out = Path(tmp) / "verdict.json"
        error = _run_worker(target, ["--self-check", str(model), str(out), "--options", json.dumps(options or {})],
                            out, timeout)
        if error:
            return {**base, "status": STATUS_FAILED, "reasons": [f"did not run under emulation: {error}"]}
        return {**base, **json.loads(out.read_text())}


def _run_worker(target: str, arguments: list[str], out: Path, timeout: float) -> str | None:
    """Run ``python -m cellsdk.batch.worker ARGUMENTS`` under the emulated ``target``; None when ``out`` was written."""
    problem = cannot_emulate(target)
    if problem:
        return problem
    worker = ["-m", "cellsdk.batch.worker", *arguments]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if target in ARM64_TARGETS:
        command, env = _arm64_command(target, worker, env, out)
    else:
        command = [qemu_binary() or "qemu-x86_64", "-cpu", EMULATED[target][0], sys.executable, *worker]
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    except OSError as err:
        return f"{emulator_name(target)} could not start ({err})"
    with on_terminate(process.kill):  # a terminated conversion leaves no emulated worker running
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return f"timed out after {timeout:.0f} s"
        except BaseException:
            process.kill()
            process.wait()
            raise
    if process.returncode != 0 or not out.is_file():
        lines = [line for line in (stderr or "").splitlines() if line.strip() and _QEMU_NOISE not in line]
        return (lines[-1] if lines else f"exit status {process.returncode}")[:300]
    return None


def _arm64_command(target: str, worker: list[str], env: dict[str, str], out: Path) -> tuple[list[str], dict[str, str]]:
    """``qemu-aarch64`` running the aarch64 Python on the worker, with this ARM CPU's ``/proc/cpuinfo`` mounted."""
    import cellsdk

    environment = arm64_environment()
    if environment is None:  # cannot_emulate said so first; kept for a caller that did not ask it
        raise ConfigError(f"no aarch64 Python environment for qemu-aarch64: {ARM64_ENV_HINT}")
    sysroot, site = environment
    features, part = _ARM_CPUINFO[target]
    cpuinfo = out.with_suffix(".cpuinfo")
    cpuinfo.write_text("".join(
        f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 0\n\n" for i in range(2)))
    runtime_root = str(Path(cellsdk.__file__).resolve().parent.parent)  # the runtime only: torch-free
    env = {**env, "QEMU_LD_PREFIX": str(sysroot), "PYTHONPATH": os.pathsep.join([str(site), runtime_root]),
           "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONHOME", None)
    script = 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"'
    command = ["unshare", "-m", "sh", "-c", script, "sh", str(cpuinfo), shutil.which("qemu-aarch64") or "qemu-aarch64",
               "-cpu", EMULATED[target][0], str(sysroot / "usr" / "bin" / "python3.11"), *worker]
    return command, env
