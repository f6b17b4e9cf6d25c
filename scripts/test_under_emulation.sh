#!/usr/bin/env bash
# Run the int8 tests of the suite inside an emulated CPU class (default: Haswell = AVX2 without VNNI).
#
#   scripts/test_under_emulation.sh            # -cpu Haswell
#   CPU=Nehalem scripts/test_under_emulation.sh
#
# The whole pytest process runs under qemu-x86_64, so ONNX Runtime, OpenVINO and PyTorch pick the
# kernels of the emulated CPU (cellsdk.platform.cpu reads it with CPUID). About 40x slower than native.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found: apt-get install qemu-user" >&2; exit 1; }
CPU=${CPU:-Haswell}
echo "inside qemu-x86_64 -cpu $CPU: $(qemu-x86_64 -cpu "$CPU" .venv/bin/python -c \
  'from cellsdk.platform.cpu import host_cpu; print(host_cpu().describe())' 2>/dev/null)"
exec qemu-x86_64 -cpu "$CPU" .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/test_default_model.py "tests/test_cpu.py::test_host_cpu_is_read_and_consistent" "$@" \
  2> >(grep -v "TCG doesn't support requested feature" >&2)
