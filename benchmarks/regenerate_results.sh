#!/usr/bin/env bash
# Regenerate benchmarks/results/: the reference EfficientNet-Lite0 (3 epochs on BloodMNIST-128),
# converted at 128 and 224 px to every format and precision, benchmarked at batch 1 and 32.
# Needs ../shared/data/bloodmnist_128. About 35 minutes on a 2-core CPU (training is 20 of them);
# an existing runs/b128_e3 checkpoint is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
data=${DATA:-../shared/data/bloodmnist_128}
run=runs/b128_e3
if [ ! -f "$run/best.safetensors" ]; then
  cellsdk-train "$data" --out "$run" --epochs 3 --input-size 128 --crop 200px --data-cropped --warmup-epochs 0.3 --quiet
fi
# --allow-regression: a failed artefact is still measured; its status stays in the manifest
cellsdk-convert "$run/best.safetensors" --out "$run/converted" --quantize fp16,int8 --calib "$data" \
    --data-cropped --allow-regression --quiet
cellsdk-convert "$run/best.safetensors" --out "$run/converted224" --input-size 224 --formats onnx,torchscript,openvino \
    --quantize fp16,int8 --calib "$data" --data-cropped --eval-limit 600 --allow-regression --quiet
cellsdk-bench "$run/converted" "$run/converted224" --batch 1,32 --iterations 30 --warmup 3 \
    --data "$data" --data-split test --data-cropped --eval-limit 600 --out benchmarks/results
