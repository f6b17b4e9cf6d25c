#!/usr/bin/env bash
# Regenerate benchmarks/results/: the shipped reference model (models/, see MODEL_CARD.md) converted at
# 128 px (every format and precision; scripts/reference_model.sh's conversion is reused when present) and
# at 224 px (ONNX, TorchScript, OpenVINO), plus the shipped INT8 ONNX file, benchmarked at batch 1 and 32.
# Needs ../shared/data/bloodmnist_128. About 20 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
data=${DATA:-../shared/data/bloodmnist_128}
ckpt=models/bloodmnist_effnet_lite0_128.safetensors
run=${RUN:-runs/reference}
if [ ! -f "$run/converted/manifest.json" ]; then
  # --allow-regression: a failed artefact is still measured; its status stays in the manifest
  cellsdk-convert "$ckpt" --out "$run/converted" --quantize fp16,int8 --calib "$data" --data-cropped \
      --allow-regression --quiet
fi
if [ ! -f "$run/converted224/manifest.json" ]; then
  cellsdk-convert "$ckpt" --out "$run/converted224" --input-size 224 --formats onnx,torchscript,openvino \
      --quantize fp16,int8 --calib "$data" --data-cropped --eval-limit 600 --allow-regression --quiet
fi
cellsdk-bench "$run/converted" "$run/converted224" cellsdk/data/bloodmnist_effnet_lite0_128.int8.onnx \
    --batch 1,32 --iterations 30 --warmup 3 --data "$data" --data-split test --data-cropped --eval-limit 600 \
    --out benchmarks/results
