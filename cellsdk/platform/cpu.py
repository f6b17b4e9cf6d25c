"""The host's instruction-set features and the CPU class they put it in (torch-free).

INT8 results depend on the CPU: without VNNI, x86 integer dot products of
``uint8 x int8`` pairs are summed into ``int16`` and saturate (AVX2 and
AVX-512 without VNNI), so one quantized model can be right on one machine and
wrong on another. cellsdk names each kind of CPU by the features that change
int8 / bf16 kernels (:data:`CPU_CLASSES`); :func:`host_cpu` says which class this
process runs on. What an artefact's records say about a class is
:mod:`cellsdk.artefacts.cpu_records`.

Features are read with the ``CPUID`` instruction itself (a few bytes of
machine code called through ctypes), so a process under ``qemu-x86_64 -cpu
Haswell`` sees the emulated CPU, exactly as ONNX Runtime's and oneDNN's kernel
dispatch does; ``/proc/cpuinfo`` (which shows the physical host) is the
fallback where CPUID cannot be called. On 64-bit ARM Linux they come from the
kernel's hardware capabilities (``getauxval(AT_HWCAP)``, also what a process
under ``qemu-aarch64 -cpu cortex-a72`` is told), and ARM CPUs are classed by the
instructions that change int8 kernels: ``SDOT`` (dot product, ARMv8.2) and
``SMMLA`` (int8 matrix multiply, ARMv8.6).

Examples:
    >>> cpu = host_cpu()
    >>> cpu.cpu_class in CPU_CLASSES
    True
    >>> classify({"avx2", "sse4_1", "sse4_2"})
    'x86-64-avx2'
    >>> CPU_CLASSES["x86-64-avx2"].int8_saturates
    True
"""

from __future__ import annotations

import ctypes
import functools
import platform
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CPU_CLASSES", "FEATURES", "CpuClass", "HostCpu", "classify", "host_cpu", "read_features"]


@dataclass(frozen=True)
class CpuClass:
    """A kind of CPU, as far as int8 / bf16 kernels are concerned.

    Attributes:
        name: the class name recorded in manifests and metadata.
        description: what the class is, with example CPUs.
        int8_saturates: ``uint8 x int8`` dot products can saturate (no VNNI on AVX2 / AVX-512).
    """

    name: str
    description: str
    int8_saturates: bool


#: Every class cellsdk names, most capable first.
CPU_CLASSES: dict[str, CpuClass] = {c.name: c for c in (
    CpuClass("x86-64-amx", "x86-64 with AMX-INT8 (Intel Sapphire Rapids and later)", False),
    CpuClass("x86-64-avx512-vnni", "x86-64 with AVX-512 VNNI (Intel Cascade Lake / Ice Lake, AMD Zen 4 and later)",
             False),
    CpuClass("x86-64-avx512", "x86-64 with AVX-512 but no VNNI (Intel Skylake-SP)", True),
    CpuClass("x86-64-avx-vnni", "x86-64 with AVX2 and AVX-VNNI, no AVX-512 (Intel Alder Lake and later clients)",
             False),
    CpuClass("x86-64-avx2", "x86-64 with AVX2, no VNNI (Intel Haswell to Comet Lake, AMD Zen 1-3)", True),
    CpuClass("x86-64-sse4", "x86-64 with SSE4.2, no AVX2 (Intel Nehalem to Ivy Bridge, low-power Atoms)", False),
    CpuClass("x86-64-baseline", "x86-64 without SSE4.1", False),
    CpuClass("arm64-i8mm", "64-bit ARM with int8 matrix multiply (I8MM) and dot product (Graviton3 / 4, Neoverse "
             "V1 / N2, Apple M2 and later)", False),
    CpuClass("arm64-dotprod", "64-bit ARM with the int8 dot product (SDOT), no I8MM (Graviton2, Neoverse N1, "
             "Cortex-A76 / A78: Jetson Orin, Raspberry Pi 5; Apple M1)", False),
    CpuClass("arm64-neon", "64-bit ARM with NEON but no dot product (Cortex-A53 / A72: Raspberry Pi 3 / 4)", False),
    CpuClass("arm64", "64-bit ARM whose features were not read (records before the ARM classes)", False),
    CpuClass("other", "a CPU cellsdk does not classify", False),
)}

#: Feature names as Linux's /proc/cpuinfo spells them; the ones that decide a class or an int8 / bf16 kernel.
FEATURES = ("sse4_1", "sse4_2", "avx", "fma", "f16c", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
            "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimddp", "i8mm", "bf16")


@dataclass(frozen=True)
class HostCpu:
    """The CPU this process runs on.

    Attributes:
        model: the CPU's model name.
        features: the features of :data:`FEATURES` it has (as the running process sees them).
        cpu_class: its class, a key of :data:`CPU_CLASSES`.
        source: how the features were read (``cpuid``, ``/proc/cpuinfo``, ``sysctl`` or ``platform``).
    """

    model: str
    features: tuple[str, ...]
    cpu_class: str
    source: str

    @property
    def int8_saturates(self) -> bool:
        """Whether this class's ``uint8 x int8`` dot products can saturate."""
        return CPU_CLASSES[self.cpu_class].int8_saturates

    def describe(self) -> str:
        """One line: ``AMD EPYC, class x86-64-avx2 (avx2 fma ...)``.

        Examples:
            >>> HostCpu("AMD EPYC", ("avx2", "fma"), "x86-64-avx2", "cpuid").describe()
            'AMD EPYC, class x86-64-avx2 (avx2 fma)'
        """
        return f"{self.model}, class {self.cpu_class} ({' '.join(self.features) or 'no listed features'})"

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary.

        Examples:
            >>> HostCpu("AMD EPYC", ("avx2",), "x86-64-avx2", "cpuid").to_dict()["cpu_class"]
            'x86-64-avx2'
        """
        return {"model": self.model, "cpu_class": self.cpu_class, "features": list(self.features),
                "source": self.source}


def classify(features: Iterable[str], machine: str | None = None) -> str:
    """The CPU class of a feature set (``machine`` as ``platform.machine()`` names it; default x86-64).

    Examples:
        >>> classify({"avx2", "avx512f", "avx512bw", "avx512_vnni"})
        'x86-64-avx512-vnni'
        >>> classify(set(), "arm64"), classify({"asimddp"}, "aarch64"), classify({"asimddp", "i8mm"}, "aarch64")
        ('arm64-neon', 'arm64-dotprod', 'arm64-i8mm')
    """
    machine = (machine or "x86_64").lower()
    f = set(features)
    if machine in ("arm64", "aarch64"):
        return "arm64-i8mm" if "i8mm" in f else "arm64-dotprod" if "asimddp" in f else "arm64-neon"
    if machine not in ("x86_64", "amd64", "x64"):
        return "other"
    if "amx_int8" in f:
        return "x86-64-amx"
    if "avx512_vnni" in f:
        return "x86-64-avx512-vnni"
    if "avx512bw" in f or "avx512f" in f:
        return "x86-64-avx512"
    if "avx2" in f:
        return "x86-64-avx-vnni" if "avx_vnni" in f else "x86-64-avx2"
    if "sse4_1" in f:
        return "x86-64-sse4"
    return "x86-64-baseline"


@functools.lru_cache(maxsize=1)
def host_cpu() -> HostCpu:
    """The CPU this process runs on, its features and class (read once per process).

    Examples:
        >>> host_cpu().source in ("cpuid", "hwcap", "/proc/cpuinfo", "sysctl", "platform")
        True
    """
    machine = platform.machine()
    model = _model_name()
    features, source = read_features(machine)
    return HostCpu(model=model, features=tuple(f for f in FEATURES if f in features),
                   cpu_class=classify(features, machine), source=source)


def read_features(machine: str | None = None) -> tuple[set[str], str]:
    """The host's features and how they were read (CPUID first on x86-64, the kernel's HWCAP on ARM Linux, then
    the OS's view).

    Examples:
        >>> features, source = read_features()
        >>> source in ("cpuid", "hwcap", "/proc/cpuinfo", "sysctl", "platform")
        True
    """
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        try:
            return _cpuid_features(), "cpuid"
        except (OSError, ValueError, AttributeError):  # no executable memory here: the OS's view
            pass
    if machine in ("aarch64", "arm64") and sys.platform.startswith("linux"):
        try:
            return _hwcap_features(), "hwcap"
        except (OSError, AttributeError):
            pass
    proc = _proc_cpuinfo_flags()
    if proc:
        return proc, "/proc/cpuinfo"
    if sys.platform == "darwin":
        return _sysctl_features(), "sysctl"
    return set(), "platform"


# --------------------------------------------------------------------------- CPUID through ctypes

# void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4])  (System V AMD64 ABI: edi, esi, rdx)
_CPUID_CODE = bytes.fromhex("53" "89f8" "89f1" "4989d0" "0fa2" "418900" "41895804" "41894808" "4189500c" "5b" "c3")
# uint64 xgetbv0(void)
_XGETBV_CODE = bytes.fromhex("31c9" "0f01d0" "48c1e220" "4809d0" "c3")


def _cpuid_features() -> set[str]:
    import mmap

    if sys.platform == "win32":  # another calling convention; the fallbacks cover Windows poorly, say "other"
        raise OSError("cpuid via ctypes is only wired for the System V ABI")
    code = _CPUID_CODE + _XGETBV_CODE
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    try:
        page.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        cpuid_fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(address)
        xgetbv_fn = ctypes.CFUNCTYPE(ctypes.c_uint64)(address + len(_CPUID_CODE))

        def cpuid(leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
            out = (ctypes.c_uint32 * 4)()
            cpuid_fn(leaf, sub, out)
            return out[0], out[1], out[2], out[3]

        return _decode(cpuid, xgetbv_fn)
    finally:
        try:
            page.close()
        except BufferError:  # a ctypes view still references the page; it is freed at exit
            pass


def _decode(cpuid, xgetbv) -> set[str]:
    def bit(value: int, n: int) -> bool:
        return bool(value >> n & 1)

    max_leaf = cpuid(0)[0]
    _, _, ecx1, _ = cpuid(1)
    xcr0 = xgetbv() if bit(ecx1, 27) else 0  # OSXSAVE: the OS saves the wide registers
    avx_os = xcr0 & 0x6 == 0x6
    avx512_os = avx_os and xcr0 & 0xE0 == 0xE0
    amx_os = xcr0 & 0x60000 == 0x60000
    found = {name for name, ok in (("sse4_1", bit(ecx1, 19)), ("sse4_2", bit(ecx1, 20)),
                                    ("avx", bit(ecx1, 28) and avx_os), ("fma", bit(ecx1, 12) and avx_os),
                                    ("f16c", bit(ecx1, 29) and avx_os)) if ok}
    if max_leaf >= 7:
        _, ebx7, ecx7, edx7 = cpuid(7, 0)
        eax71 = cpuid(7, 1)[0]
        for name, ok in (("avx2", bit(ebx7, 5) and avx_os), ("avx512f", bit(ebx7, 16) and avx512_os),
                         ("avx512bw", bit(ebx7, 30) and avx512_os), ("avx512vl", bit(ebx7, 31) and avx512_os),
                         ("avx512_vnni", bit(ecx7, 11) and avx512_os), ("avx512_fp16", bit(edx7, 23) and avx512_os),
                         ("avx512_bf16", bit(eax71, 5) and avx512_os), ("avx_vnni", bit(eax71, 4) and avx_os),
                         ("amx_tile", bit(edx7, 24) and amx_os), ("amx_int8", bit(edx7, 25) and amx_os),
                         ("amx_bf16", bit(edx7, 22) and amx_os)):
            if ok:
                found.add(name)
    return found


# --------------------------------------------------------------------------- ARM: the kernel's hardware capabilities

#: (auxiliary vector entry, bit, feature) from Linux's arch/arm64/include/uapi/asm/hwcap.h
_HWCAPS = ((16, 20, "asimddp"), (26, 13, "i8mm"), (26, 14, "bf16"))


def _hwcap_features() -> set[str]:
    """The ARM features the kernel reports to this process (``getauxval(AT_HWCAP / AT_HWCAP2)``)."""
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return {name for entry, bit, name in _HWCAPS if getauxval(entry) >> bit & 1}


# --------------------------------------------------------------------------- the OS's view

def _proc_cpuinfo_flags() -> set[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    for line in lines:
        key = line.split(":", 1)[0].strip()
        if key in ("flags", "Features"):  # x86 / ARM
            return set(line.split(":", 1)[1].split()) & set(FEATURES)
    return set()


def _sysctl_features() -> set[str]:
    names = {"hw.optional.arm.FEAT_DotProd": "asimddp", "hw.optional.arm.FEAT_I8MM": "i8mm",
             "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.avx2_0": "avx2", "hw.optional.sse4_1": "sse4_1",
             "hw.optional.sse4_2": "sse4_2", "hw.optional.avx512f": "avx512f", "hw.optional.avx512bw": "avx512bw",
             "hw.optional.avx512vnni": "avx512_vnni"}
    found: set[str] = set()
    for key, name in names.items():
        try:
            out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return found
        if out == "1":
            found.add(name)
    return found


def _model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.machine()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"
