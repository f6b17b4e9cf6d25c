#!/usr/bin/env bash
# Build an aarch64 Python environment that runs cellsdk's runtime under qemu-aarch64 (user-mode emulation).
#   scripts/arm64_env.sh DIR numpy==X onnxruntime==Y ...
# DIR/sysroot: Debian's arm64 python3.11 and the libraries it and the wheels load (apt-get download + dpkg -x,
# nothing installed on this machine); DIR/site: PyPI's manylinux aarch64 wheels of the given pins (no deps).
# Needs root (dpkg --add-architecture, apt-get update) and network access to Debian's and PyPI's mirrors.
set -euo pipefail
dir=$1; shift
[ $# -gt 0 ] || { echo "usage: scripts/arm64_env.sh DIR PIN..." >&2; exit 2; }
python=${PYTHON_HOST:-$(dirname "$0")/../.venv/bin/python}
rm -rf "$dir.partial" && mkdir -p "$dir.partial/debs" "$dir.partial/sysroot"
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
apt-get update -qq
packages=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libffi8 libssl3
          libbz2-1.0 liblzma5 libstdc++6 libgcc-s1 libuuid1 libcrypt1 libsqlite3-0 libncursesw6 libtinfo6
          libreadline8 libdb5.3 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0
          libcom-err2 libkeyutils1)
(cd "$dir.partial/debs" && apt-get download -qq "${packages[@]/%/:arm64}")
for deb in "$dir.partial"/debs/*.deb; do dpkg -x "$deb" "$dir.partial/sysroot"; done
rm -rf "$dir.partial/debs"
"$python" -m pip install --quiet --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
  --abi cp311 --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
  --target "$dir.partial/site" "$@"
rm -rf "$dir" && mv "$dir.partial" "$dir"
