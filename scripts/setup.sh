#!/usr/bin/env bash
# Create .venv (if missing) and install cellsdk with the tested pins. Idempotent.
# Usage: scripts/setup.sh [EXTRAS]   (default extras: all,test — every backend, so no test skips for a missing package)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all,test}"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
stamp=".venv/.cellsdk-installed-$(cat constraints.txt setup.cfg | sha256sum | cut -c1-16)-${extras//,/_}"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[${extras}]"
  # LiteRT conversion: litert-torch pins litert-converter, which pins xdsl, which pins typing-extensions < 4.13
  # (torch, pydantic and the rest need newer); these three go in without their pins, the packages they import
  # come from the litert_convert extra (converters/litert.py)
  if [[ ",$extras," == *",all,"* || ",$extras," == *",litert_convert,"* ]]; then
    .venv/bin/python -m pip install --quiet --no-deps -c constraints.txt litert-torch litert-converter \
      ai-edge-quantizer
  fi
  touch "$stamp"
fi
# atheris (coverage-guided fuzzing in the test suite) ships wheels for common platforms only; without it the
# fuzz test skips with the reason, so a failed install does not stop the setup.
if [[ ",$extras," == *",test,"* ]] && ! .venv/bin/python -c "import atheris" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet -c constraints.txt atheris \
    || echo "setup: atheris could not be installed; the coverage-guided fuzz test will be skipped" >&2
fi
# The GPU build of ONNX Runtime, unpacked beside the venv (not into it: it shares the CPU build's folder), so the
# tests can check what `device="cuda"` says on a machine without a GPU or driver, through the real onnxruntime-gpu.
# Best effort: without it those tests skip with the reason.
gpu_ort=".venv/opt/onnxruntime-gpu"
gpu_pin=$(grep -E '^onnxruntime-gpu==' constraints.txt || true)
if [[ ",$extras," == *",test,"* ]] && [ -n "$gpu_pin" ] && [ "$(uname -s)" = Linux ] \
    && [ ! -f "$gpu_ort/.${gpu_pin}" ]; then
  rm -rf "$gpu_ort"
  if .venv/bin/python -m pip install --quiet --no-deps --target "$gpu_ort" "$gpu_pin" >/dev/null 2>&1; then
    touch "$gpu_ort/.${gpu_pin}"
  else
    rm -rf "$gpu_ort"
    echo "setup: $gpu_pin could not be unpacked into $gpu_ort; the onnxruntime-gpu tests will be skipped" >&2
  fi
fi
# An aarch64 Python environment for verifying artefacts on ARM64 CPU classes under qemu-aarch64
# (cellsdk-convert --verify-cpus cortex-a72,neoverse-n1): Debian's arm64 Python and its libraries unpacked into a
# sysroot, and PyPI's aarch64 wheels of cellsdk's runtime dependencies. Best effort (root with apt-get only):
# without it those classes are "not verified on this platform".
arm_env=".venv/opt/arm64"
# LiteRT: ai-edge-litert 1.4.0 is the newest with Linux aarch64 wheels (2.x has none), plus its pure-Python needs
arm_pins="$(grep -E '^(numpy|pillow|onnxruntime|click|tqdm|backports.strenum)==' constraints.txt | sort | tr '\n' ' ')"
arm_pins="$arm_pins ai-edge-litert==1.4.0 flatbuffers==25.12.19 typing-extensions==4.16.0"
arm_stamp="$arm_env/.ready-$(echo "$arm_pins" | sha256sum | cut -c1-16)"
if [[ ",$extras," == *",test,"* ]] && [ "$(uname -m)" = x86_64 ] && [ "$(uname -s)" = Linux ] \
    && [ ! -f "$arm_stamp" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  mkdir -p "$(dirname "$arm_env")"
  if ! scripts/arm64_env.sh "$arm_env" $arm_pins >/dev/null 2>"$arm_env.log"; then
    echo "setup: the aarch64 environment could not be built ($(tail -n 1 "$arm_env.log" 2>/dev/null));" \
         "ARM64 CPU classes will be reported not verified" >&2
  else
    touch "$arm_stamp"
  fi
fi
# System packages, best effort (root with apt-get only):
# - QEMU user-mode emulation lets cellsdk-convert verify int8 models on CPU classes this machine is not
#   (AVX2 without VNNI, SSE4.2); without it those classes are reported "not verified".
# - Chromium lets the web-page test drive a real headless browser (Playwright); without it that test skips.
wanted=()
missing_qemu=0
if ! command -v qemu-x86_64 >/dev/null 2>&1 && [ "$(uname -m)" = x86_64 ]; then wanted+=(qemu-user); missing_qemu=1; fi
if [[ ",$extras," == *",test,"* ]] && ! command -v chromium >/dev/null 2>&1 \
    && ! command -v chromium-browser >/dev/null 2>&1; then wanted+=(chromium); fi
# - Xvfb and the X / GL libraries Qt needs let the napari plugin's tests run headless (xvfb-run); without them they skip
if [[ ",$extras," == *",test,"* ]] && ! command -v xvfb-run >/dev/null 2>&1; then
  wanted+=(xvfb xauth libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
           libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3
           libfontconfig1 libegl1 libgl1-mesa-dri)
fi
if [ ${#wanted[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}"; } >/dev/null 2>&1 \
      || echo "setup: could not install ${wanted[*]} (apt-get); without qemu-user other CPU classes are not" \
              "verified, without chromium the browser test skips, without xvfb the napari tests skip" >&2
  else
    if [ $missing_qemu = 1 ]; then
      echo "setup: qemu-x86_64 not found (apt-get install qemu-user): other CPU classes will not be verified" >&2
    fi
    if [[ " ${wanted[*]} " == *" chromium "* ]]; then
      echo "setup: chromium not found (apt-get install chromium): the browser test will be skipped" >&2
    fi
  fi
fi
